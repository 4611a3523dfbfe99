//! [`Reason`]: why a run's job is in its phase, parsed once where the backend reads the pod or the sandbox
//! status, and [`Stuck`]: which of those reasons the job will not leave by itself.
//!
//! A reason renders as the word Kubernetes (or the local runtime, in the same style) uses for it
//! (`OOMKilled`, `ErrImagePull`, `Unschedulable`...): that text is what the run record, lifecycle events and
//! the API show, so the rendering is part of the wire contract. Decisions match the variants.

use std::fmt;

/// Why a run's job is in its phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The job exited 0 (`Completed`).
    Completed,
    /// The job exited non-zero or was killed by a signal (`Error`).
    Error,
    /// The job was stopped at its deadline (`DeadlineExceeded`: the pod's `activeDeadlineSeconds`, or the
    /// local runtime's timer, which also covers a pull still going at the deadline).
    DeadlineExceeded,
    /// The kernel killed the job at its memory limit (`OOMKilled`).
    OomKilled,
    /// The node evicted the pod (`Evicted`): lost through no fault of the job.
    Evicted,
    /// The pod was deleted before it finished (`Deleted`; the watch's own word for a vanished pod).
    Deleted,
    /// Local: the process supervising the run is gone (`SupervisorLost`).
    SupervisorLost,
    /// Local: killed by `SIGXCPU` at its CPU time limit (`CpuLimit`).
    CpuLimit,
    /// Local: killed by `SIGXFSZ` at its file size limit (`FileSizeLimit`).
    FileSizeLimit,
    /// Local: the sandbox could not start the job (`StartError`).
    StartError,
    /// The scheduler cannot place the pod (`Unschedulable`: condition `PodScheduled=False`; its message
    /// names what is missing, e.g. `0/1 nodes are available: 1 Insufficient cpu.`).
    Unschedulable,
    /// The pod is on its node and its container is being made: the image pulled, the sandbox set up
    /// (`ContainerCreating`).
    ContainerCreating,
    /// The container's image cannot be pulled, with the kubelet's waiting reason.
    ImagePull(ImagePull),
    /// The container's configuration cannot be made (`CreateContainerConfigError`: e.g. an image whose user
    /// is root under `runAsNonRoot`, or names its user instead of a uid).
    CreateContainerConfigError,
    /// The container could not be created (`CreateContainerError`; locally: the image's configuration
    /// gives no command to run).
    CreateContainerError,
    /// Any other reason, as Kubernetes spelled it (`NodeLost`, `SchedulingGated`, `CrashLoopBackOff`...).
    Other(String),
}

/// The kubelet's waiting reasons of a container whose image cannot be pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImagePull {
    /// The pull failed (`ErrImagePull`; locally: refused for good).
    ErrImagePull,
    /// The kubelet waits before pulling again (`ImagePullBackOff`).
    ImagePullBackOff,
    /// The image reference cannot be parsed (`InvalidImageName`).
    InvalidImageName,
    /// The image is absent and the pull policy is `Never` (`ErrImageNeverPull`).
    ErrImageNeverPull,
}

impl ImagePull {
    /// Every variant.
    pub const ALL: [ImagePull; 4] = [
        Self::ErrImagePull,
        Self::ImagePullBackOff,
        Self::InvalidImageName,
        Self::ErrImageNeverPull,
    ];

    /// The kubelet's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ErrImagePull => "ErrImagePull",
            Self::ImagePullBackOff => "ImagePullBackOff",
            Self::InvalidImageName => "InvalidImageName",
            Self::ErrImageNeverPull => "ErrImageNeverPull",
        }
    }
}

/// Why a pending job waits in a state it will not leave by itself, and so which grace it gets before its
/// run fails with that reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stuck {
    /// Its container cannot start: the image cannot be pulled ([`Reason::ImagePull`]) or its configuration
    /// is invalid ([`Reason::CreateContainerConfigError`]). Counted from the pod's start on its node, for
    /// `--image-pull-grace`.
    Start,
    /// The scheduler cannot place it ([`Reason::Unschedulable`]). Counted from when the scheduler said so,
    /// for `--unschedulable-grace`.
    Unschedulable,
}

impl Reason {
    /// Every variant without data.
    const UNIT: [Reason; 14] = [
        Reason::Completed,
        Reason::Error,
        Reason::DeadlineExceeded,
        Reason::OomKilled,
        Reason::Evicted,
        Reason::Deleted,
        Reason::SupervisorLost,
        Reason::CpuLimit,
        Reason::FileSizeLimit,
        Reason::StartError,
        Reason::Unschedulable,
        Reason::ContainerCreating,
        Reason::CreateContainerConfigError,
        Reason::CreateContainerError,
    ];

    /// The reason Kubernetes (or the local runtime) wrote as `s`: every word is known to one variant, any
    /// other is [`Reason::Other`].
    pub fn parse(s: &str) -> Reason {
        if let Some(p) = ImagePull::ALL.into_iter().find(|p| p.as_str() == s) {
            return Reason::ImagePull(p);
        }
        Self::UNIT
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or_else(|| Reason::Other(s.to_string()))
    }

    /// The word, as the record, events and the API show it.
    pub fn as_str(&self) -> &str {
        match self {
            Reason::Completed => "Completed",
            Reason::Error => "Error",
            Reason::DeadlineExceeded => "DeadlineExceeded",
            Reason::OomKilled => "OOMKilled",
            Reason::Evicted => "Evicted",
            Reason::Deleted => "Deleted",
            Reason::SupervisorLost => "SupervisorLost",
            Reason::CpuLimit => "CpuLimit",
            Reason::FileSizeLimit => "FileSizeLimit",
            Reason::StartError => "StartError",
            Reason::Unschedulable => "Unschedulable",
            Reason::ContainerCreating => "ContainerCreating",
            Reason::ImagePull(p) => p.as_str(),
            Reason::CreateContainerConfigError => "CreateContainerConfigError",
            Reason::CreateContainerError => "CreateContainerError",
            Reason::Other(s) => s,
        }
    }

    /// Whether a pending job waiting with this reason will not leave it by itself, and which grace it gets.
    pub fn stuck(&self) -> Option<Stuck> {
        match self {
            Reason::ImagePull(_) | Reason::CreateContainerConfigError => Some(Stuck::Start),
            Reason::Unschedulable => Some(Stuck::Unschedulable),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Reason::parse(s)
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        match Reason::parse(&s) {
            Reason::Other(_) => Reason::Other(s),
            known => known,
        }
    }
}

/// Stored as its word (the local runtime's `status.json`), so files written before the type existed read
/// the same.
impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Reason::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_renders_as_the_word_it_is_parsed_from() {
        let known = Reason::UNIT
            .into_iter()
            .chain(ImagePull::ALL.map(Reason::ImagePull));
        for r in known {
            assert_eq!(Reason::parse(r.as_str()), r, "{r}");
            let json = serde_json::to_string(&r).unwrap_or_default();
            assert_eq!(json, format!("\"{r}\""));
            assert_eq!(serde_json::from_str::<Reason>(&json).ok(), Some(r));
        }
        assert_eq!(Reason::OomKilled.to_string(), "OOMKilled");
        assert_eq!(
            Reason::ImagePull(ImagePull::ImagePullBackOff).to_string(),
            "ImagePullBackOff"
        );
        assert_eq!(Reason::parse("NodeLost"), Reason::Other("NodeLost".into()));
        assert_eq!(Reason::from("NodeLost".to_string()).as_str(), "NodeLost");
    }

    #[test]
    fn pull_failures_and_bad_configs_wait_for_the_image_pull_grace_unschedulable_for_its_own() {
        for p in ImagePull::ALL {
            assert_eq!(Reason::ImagePull(p).stuck(), Some(Stuck::Start));
        }
        assert_eq!(
            Reason::CreateContainerConfigError.stuck(),
            Some(Stuck::Start)
        );
        assert_eq!(Reason::Unschedulable.stuck(), Some(Stuck::Unschedulable));
        for r in [
            Reason::ContainerCreating,
            Reason::CreateContainerError,
            Reason::Other("SchedulingGated".into()),
            Reason::Error,
        ] {
            assert_eq!(r.stuck(), None, "{r}");
        }
    }
}
