//! Retained messages for the embedded broker. rmqtt's core keeps none (its
//! default store only logs that a plugin should), and warden's status topic
//! and WireGuard address hand-out are retained: this is rmqtt's own
//! in-memory topic tree, switched on. In memory only, like the broker's
//! sessions: warden republishes what it retains.

use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::types::{Retain, TopicFilter, TopicName};
use std::time::Duration;

pub struct Retained(DefaultRetainStorage);

impl Retained {
    pub fn new() -> Self {
        Self(DefaultRetainStorage::new())
    }
}

#[async_trait::async_trait]
impl RetainStorage for Retained {
    fn enable(&self) -> bool {
        true
    }

    async fn set(&self, topic: &TopicName, retain: Retain, expiry: Option<Duration>) -> rmqtt::Result<()> {
        self.0.set_with_timeout(topic, retain, expiry).await
    }

    async fn get(&self, filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.0.get_message(filter).await
    }

    async fn count(&self) -> isize {
        self.0.count().await
    }

    async fn max(&self) -> isize {
        self.0.max().await
    }
}
