//! Lexical checks of the paths named by tar entries (and hard-link targets).
//!
//! A path is reduced to its normal components: empty and `.` components are dropped, `..` removes the
//! previous component. A path that is absolute, or whose `..` would climb above the rootfs, is refused
//! outright (never clamped): a layer that tries either is malicious or broken. The filesystem is never
//! asked to resolve one of these paths; the caller walks the components itself with `O_NOFOLLOW`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Entries nested deeper than this are refused (bounds the walkers' recursion and open descriptors).
pub(crate) const MAX_DEPTH: usize = 128;

/// A path beneath the rootfs, as normal components (none empty, `.`, `..`, or containing `/` or NUL).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RelPath(Vec<OsString>);

/// Why an entry's path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathProblem {
    /// Starts with `/`.
    Absolute,
    /// A `..` climbs above the rootfs.
    Escapes,
    /// Contains a NUL byte.
    Invalid,
    /// More than [`MAX_DEPTH`] components.
    TooDeep,
}

impl RelPath {
    /// The root itself.
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses a tar entry's raw path.
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, PathProblem> {
        if raw.starts_with(b"/") {
            return Err(PathProblem::Absolute);
        }
        if raw.contains(&0) {
            return Err(PathProblem::Invalid);
        }
        let mut parts: Vec<OsString> = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        return Err(PathProblem::Escapes);
                    }
                }
                c => parts.push(OsStr::from_bytes(c).to_os_string()),
            }
        }
        if parts.len() > MAX_DEPTH {
            return Err(PathProblem::TooDeep);
        }
        Ok(Self(parts))
    }

    /// The components.
    pub(crate) fn components(&self) -> &[OsString] {
        &self.0
    }

    /// The parent's components and the last name; `None` for the root.
    pub(crate) fn split_last(&self) -> Option<(&[OsString], &OsStr)> {
        let (last, parent) = self.0.split_last()?;
        Some((parent, last.as_os_str()))
    }

    /// This path with one more component.
    pub(crate) fn join(&self, name: &OsStr) -> Self {
        let mut v = self.0.clone();
        v.push(name.to_os_string());
        Self(v)
    }

    /// The first `n` components.
    pub(crate) fn prefix(&self, n: usize) -> Self {
        Self(self.0[..n.min(self.0.len())].to_vec())
    }

    /// `a/b/c`, for messages.
    pub(crate) fn display(&self) -> String {
        let parts: Vec<_> = self.0.iter().map(|c| c.to_string_lossy()).collect();
        parts.join("/")
    }
}

/// An entry's raw name for messages: lossy UTF-8, at most 256 characters.
pub(crate) fn show(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.chars().count() > 256 {
        let cut: String = s.chars().take(256).collect();
        format!("{cut}…")
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Result<Vec<String>, PathProblem> {
        RelPath::parse(raw.as_bytes()).map(|p| {
            p.components()
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn dot_and_empty_components_are_dropped() {
        assert_eq!(parts("./a//b/./c/").expect("ok"), ["a", "b", "c"]);
        assert_eq!(parts("./").expect("ok"), Vec::<String>::new());
    }

    #[test]
    fn inner_dotdot_stays_beneath_the_root() {
        assert_eq!(parts("a/b/../c").expect("ok"), ["a", "c"]);
        assert_eq!(parts("a/..").expect("ok"), Vec::<String>::new());
    }

    #[test]
    fn dotdot_above_the_root_escapes() {
        assert_eq!(parts("../x"), Err(PathProblem::Escapes));
        assert_eq!(parts("a/../../x"), Err(PathProblem::Escapes));
        assert_eq!(parts("./.."), Err(PathProblem::Escapes));
    }

    #[test]
    fn absolute_paths_and_nul_bytes_are_refused() {
        assert_eq!(parts("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(parts("a\0b"), Err(PathProblem::Invalid));
    }

    #[test]
    fn too_deep_paths_are_refused() {
        let deep = "d/".repeat(MAX_DEPTH + 1);
        assert_eq!(parts(&deep), Err(PathProblem::TooDeep));
    }
}
