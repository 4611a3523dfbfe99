//! Label and field selectors (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
}

impl LabelSelector {
    /// Parse a selector string; errors describe the offending part.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_req(part)?);
        }
        Ok(Self { reqs })
    }

    /// Whether the labels (a JSON object or null) satisfy the selector.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels"))
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected '(' and ')' around set values, got {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn parse_req(part: &str) -> Result<Req, String> {
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Req::NotExists(k.trim().to_string()));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Req::NotEq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok(Req::Eq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once('=') {
        return Ok(Req::Eq(k.trim().into(), v.trim().into()));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0].trim().to_string();
        let rest = words[1].trim();
        if let Some(r) = rest.strip_prefix("notin") {
            return Ok(Req::NotIn(key, parse_set(r)?));
        }
        if let Some(r) = rest.strip_prefix("in") {
            return Ok(Req::In(key, parse_set(r)?));
        }
        return Err(format!("unable to parse requirement: {part:?}"));
    }
    if part.contains(['(', ')', ' ']) {
        return Err(format!("unable to parse requirement: {part:?}"));
    }
    Ok(Req::Exists(part.to_string()))
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parse a field selector; only `=`, `==` and `!=` are supported (as upstream).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let k = k.trim();
            if !matches!(
                k,
                "metadata.name"
                    | "metadata.namespace"
                    | "status.phase"
                    | "spec.nodeName"
                    | "spec.restartPolicy"
                    | "spec.schedulerName"
                    | "spec.serviceAccountName"
                    | "status.podIP"
                    | "involvedObject.name"
                    | "involvedObject.kind"
                    | "involvedObject.uid"
                    | "involvedObject.namespace"
                    | "reason"
                    | "type"
            ) {
                return Err(format!("field label not supported: {k}"));
            }
            reqs.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(Self { reqs })
    }

    /// Whether the object satisfies the selector (missing fields compare as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, eq, want)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let got = obj.pointer(&pointer).and_then(Value::as_str).unwrap_or("");
            (got == want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let labels = json!({"app": "x", "tier": "db"});
        let m = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(Some(&labels)));
        assert_eq!(m("app=x"), Ok(true));
        assert_eq!(m("app==x,tier!=web"), Ok(true));
        assert_eq!(m("tier in (db, cache)"), Ok(true));
        assert_eq!(m("tier notin (db)"), Ok(false));
        assert_eq!(m("app,!missing"), Ok(true));
        assert_eq!(m("missing"), Ok(false));
        assert_eq!(m(""), Ok(true));
    }
}
