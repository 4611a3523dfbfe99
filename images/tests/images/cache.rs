//! The cache: LRU eviction around leases, listing and removal.

use airlock_images::{ImageError, ImageStore, PullPolicy, StoreConfig};
use airlock_test_support::registry::Registry;
use anyhow::Result;

use crate::common::*;

/// About 1 MiB of incompressible bytes, different per seed.
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn push_sized(pusher: &Pusher, name: &str, seed: u64) -> Result<String> {
    let layer = Tar::default().file("data", &noise(seed));
    pusher
        .push(&format!("{name}:1"), &ImageSpec::new(vec![layer]))
        .await
}

#[tokio::test]
async fn eviction_takes_the_least_recently_used_image_that_no_run_leases() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let mut digests = Vec::new();
    for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
        digests.push(push_sized(&pusher, n, i as u64 + 1).await?);
    }
    let store = ImageStore::open(StoreConfig {
        max_cache_bytes: 5 << 19, // room for two of the ~1 MiB images, not three
        registry: plain_config(&registry),
        ..StoreConfig::new(dir.path().join("store"))
    })?;
    let ensure = |n: &str| {
        let (s, r) = (store.clone(), pusher.reference(&format!("{n}:1")));
        async move { s.ensure(&r, PullPolicy::IfNotPresent).await }
    };
    let listed = |s: &ImageStore| {
        let s = s.clone();
        async move {
            let mut d: Vec<String> = s
                .list()
                .await?
                .iter()
                .map(|i| i.digest.to_string())
                .collect();
            d.sort();
            anyhow::Ok(d)
        }
    };
    let sorted = |v: &[&String]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };

    let a = ensure("a").await?; // oldest, but a run holds it
    drop(ensure("b").await?);
    let c = ensure("c").await?;

    assert_eq!(listed(&store).await?, sorted(&[&digests[0], &digests[2]]));
    assert!(
        a.rootfs().join("data").exists(),
        "a leased image keeps its rootfs"
    );

    drop(a);
    drop(c);
    let _c_again = ensure("c").await?; // c is now more recently used than a
    drop(ensure("d").await?);
    assert_eq!(listed(&store).await?, sorted(&[&digests[2], &digests[3]]));

    // An evicted image is pulled again when next needed.
    drop(ensure("b").await?);
    assert_eq!(registry.manifest_gets("b")?, 2);
    Ok(())
}

#[tokio::test]
async fn removal_refuses_a_leased_image_and_deletes_it_once_released() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let digest = pusher
        .push(
            "rm:1",
            &ImageSpec::new(vec![Tar::default().file("f", b"x")]),
        )
        .await?;
    let store = store(dir.path(), plain_config(&registry))?;
    let reference = pusher.reference("rm:1");
    let image = store.ensure(&reference, PullPolicy::IfNotPresent).await?;
    let rootfs = image.rootfs().to_path_buf();

    let listed = store.list().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].references, std::slice::from_ref(&reference));
    assert_eq!(listed[0].digest.as_str(), digest);
    assert_eq!(listed[0].leases, 1);
    let err = store.remove(&reference).await.expect_err("in use");
    assert!(matches!(err, ImageError::InUse { leases: 1, .. }), "{err}");
    assert!(rootfs.exists());

    drop(image);
    store.remove(&reference).await?;
    assert!(store.list().await?.is_empty());
    assert!(!rootfs.exists());
    let err = store.remove(&reference).await.expect_err("gone");
    assert!(matches!(err, ImageError::NotInStore { .. }), "{err}");
    let err = store
        .ensure(&reference, PullPolicy::Never)
        .await
        .expect_err("removed");
    assert!(matches!(err, ImageError::NotPresent { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn removing_one_of_two_references_keeps_the_image() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let spec = ImageSpec::new(vec![Tar::default().file("f", b"shared")]);
    pusher.push("one:1", &spec).await?;
    pusher.push("two:1", &spec).await?;
    let store = store(dir.path(), plain_config(&registry))?;
    drop(
        store
            .ensure(&pusher.reference("one:1"), PullPolicy::IfNotPresent)
            .await?,
    );
    drop(
        store
            .ensure(&pusher.reference("two:1"), PullPolicy::IfNotPresent)
            .await?,
    );
    assert_eq!(store.list().await?.len(), 1, "one image, unpacked once");

    store.remove(&pusher.reference("one:1")).await?;

    let listed = store.list().await?;
    assert_eq!(listed[0].references, [pusher.reference("two:1")]);
    let image = store
        .ensure(&pusher.reference("two:1"), PullPolicy::Never)
        .await?;
    assert_eq!(std::fs::read_to_string(image.rootfs().join("f"))?, "shared");
    Ok(())
}
