//! The runtime's error type, and [`NatsError`], which keeps each NATS failure's async-nats kind.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{BatchError, MessagesError, MessagesErrorKind};
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, PublishError,
    PublishErrorKind, RequestError, RequestErrorKind,
};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{ConnectError, ConnectErrorKind};

/// Errors from the shared runtime. [`Error::is_retryable`] tells whether backing off may help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis is unreachable or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(#[from] NatsError),
    /// A value could not be encoded as JSON (a bug, never retried).
    #[error("encoding JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// Configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A stored value could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether a retry with backoff may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis(e) => !matches!(e.kind(), redis::ErrorKind::Client),
            Error::Nats(e) => e.is_retryable(),
            Error::Encode(_) | Error::Config(_) | Error::Corrupt(_) => false,
        }
    }

    /// A short, bounded label of the error's class, for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Redis(_) => "redis",
            Error::Nats(_) => "nats",
            Error::Encode(_) => "encode",
            Error::Config(_) => "config",
            Error::Corrupt(_) => "corrupt",
        }
    }

    /// The JetStream API error code the server answered with, if this is such an error.
    pub fn jetstream_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Nats(e) => e.jetstream_code(),
            _ => None,
        }
    }

    /// An acknowledgement failed (async-nats reports these untyped).
    pub fn ack(e: async_nats::Error) -> Self {
        Error::Nats(NatsError::Ack(e))
    }

    /// A message of a fetched batch could not be received (async-nats reports these untyped).
    pub fn receive(e: async_nats::Error) -> Self {
        Error::Nats(NatsError::Receive(e))
    }
}

/// A NATS or JetStream failure. Each variant keeps the async-nats error, whose kind decides the retry.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Connecting failed.
    #[error("connecting: {0}")]
    Connect(#[from] ConnectError),
    /// A JetStream publish (or its ack) failed.
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
    /// Creating or updating a stream failed.
    #[error("setting up a stream: {0}")]
    CreateStream(#[from] CreateStreamError),
    /// Looking up a stream failed.
    #[error("looking up a stream: {0}")]
    GetStream(#[from] GetStreamError),
    /// A JetStream API request (stream info, subjects) failed.
    #[error("JetStream request: {0}")]
    Request(#[from] RequestError),
    /// Creating, finding or deleting a consumer failed.
    #[error("consumer: {0}")]
    Consumer(#[from] ConsumerError),
    /// A pull request failed.
    #[error("pulling: {0}")]
    Batch(#[from] BatchError),
    /// A pulled message stream failed.
    #[error("pulled messages: {0}")]
    Messages(#[from] MessagesError),
    /// Subscribing failed.
    #[error("subscribing: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// Flushing buffered writes failed.
    #[error("flushing: {0}")]
    Flush(#[from] async_nats::client::FlushError),
    /// Acknowledging a message failed (async-nats reports these untyped).
    #[error("acknowledging: {0}")]
    Ack(#[source] async_nats::Error),
    /// A message of a fetched batch could not be received (async-nats reports these untyped).
    #[error("receiving a pulled message: {0}")]
    Receive(#[source] async_nats::Error),
}

impl NatsError {
    /// Whether a retry may succeed: connection trouble, timeouts and server-side unavailability are
    /// transient; refused credentials, invalid names and configuration the server rejects are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            NatsError::Connect(e) => !matches!(
                e.kind(),
                ConnectErrorKind::ServerParse
                    | ConnectErrorKind::Authentication
                    | ConnectErrorKind::AuthorizationViolation
                    | ConnectErrorKind::Tls
            ),
            NatsError::Publish(e) => !matches!(
                e.kind(),
                PublishErrorKind::WrongLastMessageId
                    | PublishErrorKind::WrongLastSequence
                    | PublishErrorKind::MaxPayloadExceeded
            ),
            NatsError::CreateStream(e) => match e.kind() {
                CreateStreamErrorKind::EmptyStreamName
                | CreateStreamErrorKind::InvalidStreamName
                | CreateStreamErrorKind::DomainAndExternalSet => false,
                CreateStreamErrorKind::JetStream(j) => is_transient_api_error(&j),
                _ => true,
            },
            NatsError::GetStream(e) => match e.kind() {
                GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => false,
                GetStreamErrorKind::JetStream(j) => is_transient_api_error(&j),
                GetStreamErrorKind::Request => true,
            },
            NatsError::Request(e) => !matches!(e.kind(), RequestErrorKind::InvalidSubject),
            NatsError::Consumer(e) => match e.kind() {
                ConsumerErrorKind::InvalidConsumerType | ConsumerErrorKind::InvalidName => false,
                ConsumerErrorKind::JetStream(j) => is_transient_api_error(&j),
                _ => true,
            },
            NatsError::Messages(e) => !matches!(e.kind(), MessagesErrorKind::PushBasedConsumer),
            NatsError::Batch(_)
            | NatsError::Subscribe(_)
            | NatsError::Flush(_)
            | NatsError::Ack(_)
            | NatsError::Receive(_) => true,
        }
    }

    /// The JetStream API error code the server answered with, if this is such an error.
    pub fn jetstream_code(&self) -> Option<ErrorCode> {
        let api = match self {
            NatsError::CreateStream(e) => match e.kind() {
                CreateStreamErrorKind::JetStream(j) => j,
                _ => return None,
            },
            NatsError::GetStream(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j) => j,
                _ => return None,
            },
            NatsError::Consumer(e) => match e.kind() {
                ConsumerErrorKind::JetStream(j) => j,
                _ => return None,
            },
            _ => return None,
        };
        Some(api.error_code())
    }
}

/// A JetStream API error is transient when the server says so by its status (5xx: no quorum, leader
/// election, storage unavailable); 4xx means the request itself is refused.
fn is_transient_api_error(e: &jetstream::Error) -> bool {
    e.code() >= 500
}

/// Lets `?` turn any async-nats error straight into [`Error::Nats`], keeping its kind.
macro_rules! nats_errors_into_error {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Nats(NatsError::from(e))
            }
        }
    )*};
}

nats_errors_into_error!(
    ConnectError,
    PublishError,
    CreateStreamError,
    GetStreamError,
    RequestError,
    ConsumerError,
    BatchError,
    MessagesError,
    async_nats::SubscribeError,
    async_nats::client::FlushError,
);

/// Capped exponential backoff delay for the n-th delivery of a message (1-based): 1 s, 2 s, 4 s... up to `cap`.
pub fn redelivery_delay(delivered: i64, cap: Duration) -> Duration {
    let exp = delivered.clamp(1, 16) as u32 - 1;
    Duration::from_secs(1u64 << exp).min(cap)
}
