//! The shared read side of the compliance table.
//!
//! Sharded maps (dashmap) with foldhash: measured here as the fastest
//! read-mostly map on two cores (see ../shared/DEPENDENCIES.md); the hasher
//! matters more than the map. Values are `Arc<Device>`: a reader clones the
//! Arc and drops the shard's read lock at once, so nothing is ever held across
//! an `.await` or while the engine writes.

use super::device::Device;
use super::identity::{Bound, Owners};
use crate::mac::Mac;
use dashmap::DashMap;
use std::sync::Arc;

type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// A cheap, cloneable handle on the table. Only the [`super::Engine`] writes.
#[derive(Clone, Default)]
pub struct Table {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    devices: Map<Arc<str>, Arc<Device>>,
    /// The device itself, not its id: MAB looks a MAC up on every request,
    /// and a second lookup (by id) was a third of the table's share of its
    /// CPU. So every store of a device rewrites its MACs' entries.
    by_mac: Map<Mac, Arc<Device>>,
    by_wg_key: Map<Arc<str>, Arc<str>>,
    by_cert: Map<Arc<str>, Arc<str>>,
}

impl Table {
    /// A table with room for `devices` devices and their identities, so a
    /// restore of a large fleet does not grow (and rehash) its maps as it
    /// goes: each growth copies the map and touches fresh memory.
    pub fn with_capacity(devices: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                devices: map_of(devices),
                by_mac: map_of(devices),
                by_wg_key: map_of(devices),
                by_cert: map_of(devices),
            }),
        }
    }

    /// The device with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Device>> {
        self.inner.devices.get(id).map(|d| Arc::clone(d.value()))
    }

    /// The device that reported this MAC address.
    pub fn by_mac(&self, mac: Mac) -> Option<Arc<Device>> {
        self.inner.by_mac.get(&mac).map(|e| Arc::clone(e.value()))
    }

    /// The device that reported this WireGuard public key (base64).
    pub fn by_wg_key(&self, key: &str) -> Option<Arc<Device>> {
        let id = self.inner.by_wg_key.get(key).map(|e| Arc::clone(e.value()))?;
        self.get(&id)
    }

    /// The device that reported this certificate identity.
    pub fn by_cert_identity(&self, identity: &str) -> Option<Arc<Device>> {
        let id = self.inner.by_cert.get(identity).map(|e| Arc::clone(e.value()))?;
        self.get(&id)
    }

    pub fn len(&self) -> usize {
        self.inner.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.devices.is_empty()
    }

    /// Calls `f` on every device, in no particular order. Each shard is
    /// read-locked only while it is walked.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Device>)) {
        for entry in self.inner.devices.iter() {
            f(entry.value());
        }
    }

    /// Stores `device`, releasing the identities `old` claimed and it no
    /// longer claims (where `old` held them), and binding `bound`.
    pub(crate) fn put(&self, device: Arc<Device>, old: Option<&Device>, bound: &Bound) {
        let id = &device.id;
        let new_r = &device.report;
        if let Some(old) = old {
            let old_r = &old.report;
            // A set, not a scan per MAC: a report may list thousands.
            let kept: std::collections::HashSet<Mac, foldhash::fast::RandomState> = macs(new_r).collect();
            for mac in macs(old_r) {
                if !kept.contains(&mac) {
                    self.inner.by_mac.remove_if(&mac, |_, owner| owner.id == *id);
                }
            }
            if old_r.wg_public_key != new_r.wg_public_key
                && let Some(k) = &old_r.wg_public_key
            {
                self.inner.by_wg_key.remove_if(&**k, |_, owner| owner == id);
            }
            if old_r.cert_identity != new_r.cert_identity
                && let Some(c) = &old_r.cert_identity
            {
                self.inner.by_cert.remove_if(&**c, |_, owner| owner == id);
            }
        }
        // Every MAC the device holds, kept ones too: their entries carry
        // the record being replaced.
        for mac in &bound.macs {
            self.inner.by_mac.insert(*mac, Arc::clone(&device));
        }
        if let Some(k) = &bound.wg_key {
            self.inner.by_wg_key.insert(Arc::clone(k), Arc::clone(id));
        }
        if let Some(c) = &bound.cert {
            self.inner.by_cert.insert(Arc::clone(c), Arc::clone(id));
        }
        self.inner.devices.insert(Arc::clone(id), device);
    }

    /// Removes a device and releases the identities it holds.
    pub(crate) fn remove(&self, device: &Device) {
        let id = &device.id;
        let r = &device.report;
        for mac in macs(r) {
            self.inner.by_mac.remove_if(&mac, |_, owner| owner.id == *id);
        }
        if let Some(k) = &r.wg_public_key {
            self.inner.by_wg_key.remove_if(&**k, |_, owner| owner == id);
        }
        if let Some(c) = &r.cert_identity {
            self.inner.by_cert.remove_if(&**c, |_, owner| owner == id);
        }
        self.inner.devices.remove(id);
    }

    /// Replaces a device's record; its report, and so its identities, are
    /// unchanged. The MACs it holds point at the new record; a MAC its
    /// report lists but another device holds (a conflict) is left alone.
    pub(crate) fn replace(&self, device: Arc<Device>) {
        for mac in macs(&device.report) {
            if let Some(mut owner) = self.inner.by_mac.get_mut(&mac)
                && owner.id == device.id
            {
                *owner = Arc::clone(&device);
            }
        }
        self.inner.devices.insert(Arc::clone(&device.id), device);
    }
}

fn map_of<K: Eq + std::hash::Hash, V>(n: usize) -> Map<K, V> {
    Map::with_capacity_and_hasher(n, Default::default())
}

/// The valid MAC addresses in a report (malformed ones are not indexed).
fn macs(r: &crate::telemetry::Report) -> impl Iterator<Item = Mac> + '_ {
    r.mac_addresses.iter().flat_map(|v| v.iter()).filter_map(|m| Mac::parse(m))
}

impl Owners for Table {
    fn mac_owner(&self, mac: Mac) -> Option<Arc<Device>> {
        self.by_mac(mac)
    }

    fn wg_key_owner(&self, key: &str) -> Option<Arc<Device>> {
        self.by_wg_key(key)
    }

    fn cert_owner(&self, identity: &str) -> Option<Arc<Device>> {
        self.by_cert_identity(identity)
    }

    fn device(&self, id: &str) -> Option<Arc<Device>> {
        self.get(id)
    }
}
