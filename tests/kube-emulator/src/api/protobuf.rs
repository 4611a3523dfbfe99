//! Protobuf request bodies, as kubectl sends them for built-in kinds (`kubectl create namespace`,
//! `kubectl create configmap|secret`): the `k8s\0` magic, a `runtime.Unknown` envelope (`typeMeta`,
//! `raw`, `contentEncoding`, `contentType`) and the object in `raw`. Namespaces, ConfigMaps and Secrets are
//! decoded into their JSON form (field numbers from `k8s.io/api/core/v1/generated.proto` and
//! `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`); replies stay JSON, which client-go accepts.
//! Other kinds, and fields this decoder does not know, are refused with 415 rather than dropped.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::kinds::Kind;
use crate::status::ApiError;

/// The media type of Kubernetes protobuf bodies.
pub(super) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// The JSON object a protobuf body of `kind` encodes.
pub(super) fn decode(kind: Kind, body: &[u8]) -> Result<Value, ApiError> {
    decode_object(kind, body).map_err(|e| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request could not be decoded as {MEDIA_TYPE}: {e}; send application/json"),
        )
    })
}

fn decode_object(kind: Kind, body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("it does not start with the k8s protobuf magic")?;
    let (mut api_version, mut type_kind, mut raw) = (String::new(), String::new(), None);
    for f in Reader::new(envelope) {
        match f? {
            (1, Wire::Bytes(b)) => {
                for g in Reader::new(b) {
                    match g? {
                        (1, Wire::Bytes(v)) => api_version = string(v, "typeMeta.apiVersion")?,
                        (2, Wire::Bytes(v)) => type_kind = string(v, "typeMeta.kind")?,
                        (n, w) => unset(n, &w, "typeMeta")?,
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = Some(b),
            (3, Wire::Bytes(b)) if !b.is_empty() => {
                return Err(format!(
                    "content encoding {:?} is not supported",
                    String::from_utf8_lossy(b)
                ));
            }
            (4, Wire::Bytes(b)) if !b.is_empty() && b != b"application/vnd.kubernetes.protobuf" => {
                return Err(format!(
                    "content type {:?} is not supported",
                    String::from_utf8_lossy(b)
                ));
            }
            (3 | 4, Wire::Bytes(_)) => {}
            (n, w) => unset(n, &w, "runtime.Unknown")?,
        }
    }
    if type_kind != kind.name() {
        return Err(format!(
            "the body is a {type_kind:?}, the URL names {}",
            kind.name()
        ));
    }
    let raw = raw.unwrap_or_default();
    let mut obj = match kind {
        Kind::Namespace => namespace(raw)?,
        Kind::ConfigMap => config_map(raw)?,
        Kind::Secret => secret(raw)?,
        other => {
            return Err(format!(
                "{} is not decoded from protobuf by the emulator",
                other.name()
            ));
        }
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(type_kind));
    Ok(Value::Object(obj))
}

fn namespace(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut obj = Map::new();
    for f in Reader::new(raw) {
        match f? {
            (1, Wire::Bytes(b)) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            (2, Wire::Bytes(b)) => {
                let mut finalizers = Vec::new();
                for g in Reader::new(b) {
                    match g? {
                        (1, Wire::Bytes(v)) => {
                            finalizers.push(json!(string(v, "spec.finalizers")?))
                        }
                        (n, w) => unset(n, &w, "Namespace spec")?,
                    }
                }
                if !finalizers.is_empty() {
                    obj.insert("spec".into(), json!({"finalizers": finalizers}));
                }
            }
            (3, Wire::Bytes(b)) => {
                for g in Reader::new(b) {
                    match g? {
                        (1, Wire::Bytes(v)) => {
                            obj.insert(
                                "status".into(),
                                json!({"phase": string(v, "status.phase")?}),
                            );
                        }
                        (n, _) => {
                            return Err(format!("field {n} of Namespace status is not supported"));
                        }
                    }
                }
            }
            (n, w) => unset(n, &w, "Namespace")?,
        }
    }
    Ok(obj)
}

fn config_map(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let (mut obj, mut data, mut binary) = (Map::new(), Map::new(), Map::new());
    for f in Reader::new(raw) {
        match f? {
            (1, Wire::Bytes(b)) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            (2, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, "data")?;
                data.insert(k, json!(string(v, "data")?));
            }
            (3, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, "binaryData")?;
                binary.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                );
            }
            (4, Wire::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            (n, w) => unset(n, &w, "ConfigMap")?,
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    Ok(obj)
}

fn secret(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let (mut obj, mut data, mut string_data) = (Map::new(), Map::new(), Map::new());
    for f in Reader::new(raw) {
        match f? {
            (1, Wire::Bytes(b)) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            (2, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, "data")?;
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                );
            }
            (3, Wire::Bytes(b)) => {
                obj.insert("type".into(), json!(string(b, "type")?));
            }
            (4, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, "stringData")?;
                string_data.insert(k, json!(string(v, "stringData")?));
            }
            (5, Wire::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            (n, w) => unset(n, &w, "Secret")?,
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    Ok(obj)
}

/// `ObjectMeta`: name (1), generateName (2), namespace (3), labels (11), annotations (12),
/// finalizers (14). Anything else (set by servers, or owner references) is refused.
fn object_meta(b: &[u8]) -> Result<Value, String> {
    let (mut meta, mut labels, mut annotations, mut finalizers) =
        (Map::new(), Map::new(), Map::new(), Vec::new());
    for f in Reader::new(b) {
        match f? {
            (1, Wire::Bytes(v)) => {
                meta.insert("name".into(), json!(string(v, "metadata.name")?));
            }
            (2, Wire::Bytes(v)) => {
                meta.insert(
                    "generateName".into(),
                    json!(string(v, "metadata.generateName")?),
                );
            }
            (3, Wire::Bytes(v)) => {
                meta.insert("namespace".into(), json!(string(v, "metadata.namespace")?));
            }
            (11, Wire::Bytes(v)) => {
                let (k, v) = map_entry(v, "metadata.labels")?;
                labels.insert(k, json!(string(v, "metadata.labels")?));
            }
            (12, Wire::Bytes(v)) => {
                let (k, v) = map_entry(v, "metadata.annotations")?;
                annotations.insert(k, json!(string(v, "metadata.annotations")?));
            }
            (14, Wire::Bytes(v)) => finalizers.push(json!(string(v, "metadata.finalizers")?)),
            (n, w) => unset(n, &w, "ObjectMeta")?,
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// A map entry message: key (1, string) and value (2, bytes).
fn map_entry<'a>(b: &'a [u8], what: &str) -> Result<(String, &'a [u8]), String> {
    let (mut key, mut value) = (String::new(), &b[..0]);
    for f in Reader::new(b) {
        match f? {
            (1, Wire::Bytes(k)) => key = string(k, what)?,
            (2, Wire::Bytes(v)) => value = v,
            (n, w) => unset(n, &w, what)?,
        }
    }
    Ok((key, value))
}

/// Go's encoder writes every non-pointer field, set or not (`selfLink: ""`, `generation: 0`, an empty
/// `creationTimestamp`): a field this decoder does not map is accepted only when it holds its zero value.
fn unset(n: u32, w: &Wire<'_>, what: &str) -> Result<(), String> {
    if is_zero(w) {
        Ok(())
    } else {
        Err(format!("field {n} of {what} is not supported"))
    }
}

fn is_zero(w: &Wire<'_>) -> bool {
    match w {
        Wire::Varint(v) => *v == 0,
        Wire::Fixed(v) => *v == 0,
        Wire::Bytes(b) => {
            b.is_empty() || Reader::new(b).all(|f| f.is_ok_and(|(_, inner)| is_zero(&inner)))
        }
    }
}

fn string(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

/// A field's value by wire type.
#[derive(Debug)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

/// Iterates the `(field number, value)` pairs of one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            failed: false,
        }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn next_field(&mut self) -> Result<(u32, Wire<'a>), String> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len());
                let end = end.ok_or("truncated length-delimited field")?;
                let b = &self.buf[self.pos..end];
                self.pos = end;
                Wire::Bytes(b)
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                let b = self
                    .buf
                    .get(self.pos..self.pos + n)
                    .ok_or("truncated fixed field")?;
                self.pos += n;
                Wire::Fixed(b.iter().rev().fold(0, |a, x| (a << 8) | u64::from(*x)))
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok((field, wire))
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u32, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let r = self.next_field();
        self.failed = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u32, b: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn a_namespace_in_its_envelope_decodes_to_json() {
        let meta = [
            field(1, b"x"),
            field(11, &[field(1, b"team"), field(2, b"a")].concat()),
        ]
        .concat();
        let ns = [field(1, &meta), field(2, b""), field(3, b"")].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [
            MAGIC.to_vec(),
            field(1, &type_meta),
            field(2, &ns),
            field(3, b""),
            field(4, b""),
        ]
        .concat();
        let v = decode(Kind::Namespace, &body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}})
        );
    }

    #[test]
    fn unknown_fields_other_kinds_and_truncation_are_refused_with_415() {
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let cm = [field(1, &field(13, b"owner"))].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        let e = decode(Kind::ConfigMap, &body).expect_err("ownerReferences");
        assert_eq!(e.code, 415);
        assert!(
            e.message.contains("field 13 of ObjectMeta"),
            "{}",
            e.message
        );
        assert_eq!(decode(Kind::Pod, &body).expect_err("kind").code, 415);
        assert_eq!(
            decode(Kind::ConfigMap, &body[..body.len() - 2])
                .expect_err("truncated")
                .code,
            415
        );
        assert_eq!(
            decode(Kind::ConfigMap, b"{}").expect_err("no magic").code,
            415
        );
    }
}
