//! Who a container runs as, as the kubelet and the runtime decide it: `runAsUser`/`runAsGroup` (container
//! over pod), else the image's `User` (numeric, or a name looked up in the image's `/etc/passwd`), and the
//! kubelet's `runAsNonRoot` verification with its exact messages.

use std::path::Path;

use serde_json::Value;

/// Why a container cannot be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UserError {
    /// The kubelet refuses the container's config: waiting reason `CreateContainerConfigError`.
    Config(String),
    /// The runtime cannot create it: waiting reason `CreateContainerError`.
    Create(String),
}

/// The uid and gid the container's process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A security context field of the container, else of the pod.
fn field<'a>(pod: &'a Value, container: &'a Value, name: &str) -> Option<&'a Value> {
    container
        .pointer(&format!("/securityContext/{name}"))
        .or_else(|| pod.pointer(&format!("/spec/securityContext/{name}")))
}

/// The pod as the kubelet names it in messages (`format.Pod`): `name_namespace(uid)`.
fn pod_ref(pod: &Value) -> String {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{}_{}({})",
        s("/metadata/name"),
        s("/metadata/namespace"),
        s("/metadata/uid")
    )
}

/// Decides the container's user from the pod, the container and the image's `User`, reading
/// `/etc/passwd` and `/etc/group` under `rootfs` for names.
pub(super) fn run_as(
    pod: &Value,
    container: &Value,
    image_user: Option<&str>,
    rootfs: &Path,
) -> Result<RunAs, UserError> {
    let cname = container.get("name").and_then(Value::as_str).unwrap_or("");
    let run_as_user = field(pod, container, "runAsUser").and_then(Value::as_u64);
    let run_as_group = field(pod, container, "runAsGroup").and_then(Value::as_u64);
    let non_root = field(pod, container, "runAsNonRoot")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (user, group) = match image_user.filter(|u| !u.is_empty()) {
        Some(u) => match u.split_once(':') {
            Some((u, g)) => (Some(u), Some(g)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    if non_root {
        let at = format!("(pod: {:?}, container: {cname})", pod_ref(pod));
        match run_as_user {
            Some(0) => {
                return Err(UserError::Config(format!(
                    "container's runAsUser breaks non-root policy {at}"
                )));
            }
            Some(_) => {}
            None => match user {
                None => {
                    return Err(UserError::Config(format!(
                        "container has runAsNonRoot and image will run as root {at}"
                    )));
                }
                Some(u) => match u.parse::<u32>() {
                    Ok(0) => {
                        return Err(UserError::Config(format!(
                            "container has runAsNonRoot and image will run as root {at}"
                        )));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(UserError::Config(format!(
                            "container has runAsNonRoot and image has non-numeric user ({u}), cannot verify user is non-root {at}"
                        )));
                    }
                },
            },
        }
    }
    let (uid, passwd_gid) = match (run_as_user, user) {
        (Some(uid), _) => (to_u32(uid)?, None),
        (None, None) => (0, Some(0)),
        (None, Some(u)) => match u.parse::<u32>() {
            Ok(uid) => (
                uid,
                lookup(rootfs, "etc/passwd", |f| f[2] == u).and_then(|f| f[3].parse().ok()),
            ),
            Err(_) => {
                let entry = lookup(rootfs, "etc/passwd", |f| f[0] == u).ok_or_else(|| {
                    UserError::Create(format!(
                        "failed to create containerd container: unable to find user {u}: no matching entries in passwd file"
                    ))
                })?;
                let uid = entry[2].parse().map_err(|_| bad_passwd(u))?;
                (uid, entry[3].parse().ok())
            }
        },
    };
    let gid = match (run_as_group, group) {
        (Some(g), _) => to_u32(g)?,
        (None, Some(g)) => match g.parse::<u32>() {
            Ok(g) => g,
            Err(_) => lookup(rootfs, "etc/group", |f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    UserError::Create(format!(
                        "failed to create containerd container: unable to find group {g}: no matching entries in group file"
                    ))
                })?,
        },
        (None, None) => passwd_gid.unwrap_or(0),
    };
    Ok(RunAs { uid, gid })
}

fn to_u32(v: u64) -> Result<u32, UserError> {
    u32::try_from(v).map_err(|_| UserError::Config(format!("user or group id {v} out of range")))
}

fn bad_passwd(u: &str) -> UserError {
    UserError::Create(format!(
        "failed to create containerd container: invalid passwd entry for user {u}"
    ))
}

/// The first line of `rootfs/file` (colon-separated, at least 4 fields) matching `pick`. The file is
/// read through the rootfs only if it is a regular file there (the store never leaves symlinks that
/// escape, but a lookup must not follow one anyway).
fn lookup(rootfs: &Path, file: &str, pick: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    let path = rootfs.join(file);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && pick(f))
        .map(|f| f.into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(sc: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
               "spec": {"securityContext": sc, "containers": [{"name": "main"}]}})
    }

    #[test]
    fn run_as_non_root_refuses_an_image_that_would_run_as_root_with_the_kubelets_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pod(json!({"runAsNonRoot": true}));
        let c = p.pointer("/spec/containers/0").cloned().unwrap_or_default();
        let err = run_as(&p, &c, None, dir.path()).expect_err("root");
        assert_eq!(
            err,
            UserError::Config(
                "container has runAsNonRoot and image will run as root (pod: \"p_ns(u1)\", container: main)"
                    .into()
            )
        );
        let err = run_as(&p, &c, Some("nobody"), dir.path()).expect_err("name");
        assert!(
            matches!(&err, UserError::Config(m) if m.contains("non-numeric user (nobody)")),
            "{err:?}"
        );
        assert_eq!(
            run_as(&p, &c, Some("1000:2000"), dir.path()),
            Ok(RunAs {
                uid: 1000,
                gid: 2000
            })
        );
    }

    #[test]
    fn the_containers_run_as_user_wins_over_the_pods_and_the_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pod(json!({"runAsNonRoot": true, "runAsUser": 0}));
        let c = json!({"name": "main", "securityContext": {"runAsUser": 4242, "runAsGroup": 7}});
        assert_eq!(
            run_as(&p, &c, Some("0"), dir.path()),
            Ok(RunAs { uid: 4242, gid: 7 })
        );
        let err = run_as(&p, &json!({"name": "main"}), None, dir.path()).expect_err("root");
        assert!(
            matches!(&err, UserError::Config(m) if m.starts_with("container's runAsUser breaks non-root policy")),
            "{err:?}"
        );
    }

    #[test]
    fn a_user_name_is_looked_up_in_the_images_passwd_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1234:99::/:/bin/sh\n",
        )
        .expect("write");
        let p = pod(json!({}));
        let c = json!({"name": "main"});
        assert_eq!(
            run_as(&p, &c, Some("app"), dir.path()),
            Ok(RunAs { uid: 1234, gid: 99 })
        );
        assert!(matches!(
            run_as(&p, &c, Some("ghost"), dir.path()),
            Err(UserError::Create(_))
        ));
        assert_eq!(
            run_as(&p, &c, None, dir.path()),
            Ok(RunAs { uid: 0, gid: 0 })
        );
    }
}
