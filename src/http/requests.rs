//! What the API asks of the tasks that own the state, and what it reads
//! that they keep: the requests carry a reply channel, answered once the
//! owner has done it (durably, for writes). Defined here, on the asking
//! side, so the HTTP layer depends on no task; the gateway's tasks take
//! them in.

use crate::compliance::Held;
use std::sync::Arc;

/// An operator's confirmation of a held batch; the reply is the batch
/// applied, or `None` when no batch has that id.
pub struct Confirm {
    pub id: u64,
    /// The API token's name, and the client's address.
    pub by: String,
    pub from: Option<String>,
    pub reply: tokio::sync::oneshot::Sender<Option<Held>>,
}

/// An override to set (`Some`) or clear (`None`), from the API. The reply
/// is `None` for a device the table does not know; otherwise a receiver
/// that fires once the change is durable (and is dropped if it cannot be).
pub struct OverrideRequest {
    pub device: String,
    pub set: Option<crate::compliance::overrides::Override>,
    /// The API token's name that asked, and the client's address.
    pub by: String,
    pub from: Option<String>,
    pub reply: tokio::sync::oneshot::Sender<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// A device's sessions, asked for by the API.
pub struct SessionQuery {
    pub device: String,
    pub reply: tokio::sync::oneshot::Sender<Vec<serde_json::Value>>,
}

/// Each device's running plans as the API shows them (absent: none), as
/// JSON text: a `serde_json::Value` per device cost kilobytes, and a policy
/// change can start 100,000 plans at once.
pub type RemediationViews = dashmap::DashMap<Arc<str>, Box<str>, foldhash::fast::RandomState>;
