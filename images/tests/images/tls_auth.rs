//! A TLS registry (CA generated here) with htpasswd auth.

use airlock_images::{ImageError, PullPolicy, RegistryConfig};
use anyhow::Result;

use crate::common::*;

fn tls_config(reg: &TlsRegistry, auth: Option<std::path::PathBuf>) -> RegistryConfig {
    RegistryConfig {
        system_roots: false,
        extra_ca_files: vec![reg.ca_file.clone()],
        auth_file: auth,
        ..RegistryConfig::default()
    }
}

#[tokio::test]
async fn an_image_is_pulled_over_tls_with_credentials_from_the_auth_file() -> Result<()> {
    let (dir, _) = world()?;
    let reg = tls_registry(dir.path()).await?;
    let pusher = Pusher::tls(&reg.registry, &reg.ca_pem);
    let digest = pusher
        .push(
            "private/app:1",
            &ImageSpec::new(vec![busybox_layer("over tls")?]),
        )
        .await?;
    let auth = auth_file(dir.path(), &reg.registry.host(), USER, PASSWORD)?;
    let store = store(dir.path(), tls_config(&reg, Some(auth)))?;

    let by_tag = store
        .ensure(&pusher.reference("private/app:1"), PullPolicy::IfNotPresent)
        .await?;
    let by_digest = store
        .ensure(
            &pusher.reference(&format!("private/app@{digest}")),
            PullPolicy::Always,
        )
        .await?;

    assert_eq!(by_tag.digest().as_str(), digest);
    assert_eq!(by_digest.digest().as_str(), digest);
    assert_eq!(
        std::fs::read_to_string(by_tag.rootfs().join("etc/airlock-marker"))?,
        "over tls"
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_a_permanent_unauthorized_error() -> Result<()> {
    let (dir, _) = world()?;
    let reg = tls_registry(dir.path()).await?;
    let pusher = Pusher::tls(&reg.registry, &reg.ca_pem);
    pusher
        .push(
            "private/app:1",
            &ImageSpec::new(vec![Tar::default().file("a", b"b")]),
        )
        .await?;
    let reference = pusher.reference("private/app:1");
    let wrong = auth_file(dir.path(), &reg.registry.host(), USER, "wrong")?;

    for auth in [None, Some(wrong)] {
        let store = store(dir.path(), tls_config(&reg, auth))?;
        let err = store
            .ensure(&reference, PullPolicy::IfNotPresent)
            .await
            .expect_err("unauthorized");
        assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
        assert!(err.is_permanent());
        assert!(
            err.to_string().starts_with(&format!(
                "failed to pull image \"{reference}\": unauthorized"
            )),
            "{err}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_registry_whose_certificate_is_not_trusted_is_refused_permanently() -> Result<()> {
    let (dir, _) = world()?;
    let reg = tls_registry(dir.path()).await?;
    let config = RegistryConfig {
        system_roots: false,
        ..RegistryConfig::default()
    };
    let store = store(dir.path(), config)?;

    let err = store
        .ensure(
            &format!("{}/x:1", reg.registry.host()),
            PullPolicy::IfNotPresent,
        )
        .await
        .expect_err("untrusted");

    assert!(matches!(err, ImageError::Certificate { .. }), "{err}");
    assert!(err.is_permanent());
    Ok(())
}

#[tokio::test]
async fn a_registry_not_listed_as_insecure_is_spoken_to_over_https() -> Result<()> {
    let (dir, _) = world()?;
    let registry = airlock_test_support::registry::Registry::start_plain().await?;
    let store = store(
        dir.path(),
        RegistryConfig {
            system_roots: false,
            ..RegistryConfig::default()
        },
    )?;
    let err = store
        .ensure(
            &format!("{}/x:1", registry.host()),
            PullPolicy::IfNotPresent,
        )
        .await
        .expect_err("plain registry over https");
    assert!(
        matches!(
            err,
            ImageError::Unavailable { .. } | ImageError::Registry { .. }
        ),
        "{err}"
    );
    Ok(())
}
