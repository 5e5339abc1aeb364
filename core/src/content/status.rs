//! What the content module reports: status, the items `mynet ls` lists, the popular items
//! bootstrap nodes name (SPEC R4.3), and the catalogue's own consistency check.

use super::*;

impl Content {
    /// The local catalogue.
    pub fn items(&self) -> &BTreeMap<ContentId, Item> {
        &self.items
    }

    /// Whether the item is held completely.
    pub fn holds(&self, id: &ContentId) -> bool {
        self.items.get(id).is_some_and(Item::complete)
    }

    pub fn status(&self) -> (ContentStatus, SyncStatus) {
        let complete = self.items.values().filter(|i| i.complete()).count() as u64;
        let content = ContentStatus {
            items: self.items.len() as u64,
            bytes_stored: self.bytes_stored,
            complete,
            partial: self.items.len() as u64 - complete,
        };
        let sync = SyncStatus {
            stats: self.stats.clone(),
            queue: self.queue.len() as u64,
            active_transfers: self.active.len() as u64,
            downlink_rate: self.down.rate(),
            pieces_owed: self.down.owed() as u64,
        };
        (content, sync)
    }

    /// Every item for `mynet ls`, in id order.
    pub fn list(&self) -> Vec<ItemStatus> {
        let queued_only = self.queue.iter().filter(|id| !self.items.contains_key(id));
        let fetching = self.active.keys().filter(|id| !self.items.contains_key(id));
        let mut out: Vec<ItemStatus> =
            self.items.keys().chain(queued_only).chain(fetching).filter_map(|id| self.item_status(id)).collect();
        out.sort_by_key(|i| i.id);
        out
    }

    /// One item as `mynet ls` shows it: held (wholly or partly), queued, or being looked for.
    pub fn item_status(&self, id: &ContentId) -> Option<ItemStatus> {
        if let Some(item) = self.items.get(id) {
            let state = if item.complete() {
                "complete"
            } else if self.queued.contains(id) {
                "queued"
            } else {
                "partial"
            };
            let (size, pieces, pieces_held) = (item.size, item.layout().pieces(), item.held.ones());
            return Some(ItemStatus { id: *id, size, pieces, pieces_held, state });
        }
        let (size, state) = if self.queued.contains(id) {
            (self.remote.get(id).map_or(0, |r| r.size), "queued")
        } else {
            // A transfer still looking for the item's metadata.
            (self.active.get(id)?.layout.map_or(0, |l| l.size), "fetching")
        };
        Some(ItemStatus { id: *id, size, pieces: Layout { size }.pieces(), pieces_held: 0, state })
    }

    /// The most requested items we hold (SPEC R4.3 popular content).
    pub fn popular(&self) -> Vec<[u8; 32]> {
        let mut served: Vec<(u64, ContentId)> =
            self.items.iter().filter(|(_, i)| i.complete() && i.served > 0).map(|(id, i)| (i.served, *id)).collect();
        served.sort_by(|a, b| b.cmp(a));
        served.into_iter().take(POPULAR_MAX).map(|(_, id)| id.0).collect()
    }

    /// Held pieces that are not durable yet cannot exist: checks the catalogue's sums.
    pub fn check(&self) -> Result<(), String> {
        let mut bytes = 0;
        for (id, item) in &self.items {
            let layout = item.layout();
            if item.held.len() != layout.pieces() {
                return Err(format!("item {id}: {} bits for {} pieces", item.held.len(), layout.pieces()));
            }
            bytes += held_bytes(item);
        }
        if bytes != self.bytes_stored {
            return Err(format!("bytes_stored {} but held pieces sum to {bytes}", self.bytes_stored));
        }
        if self.queue.len() != self.queued.len() {
            return Err("sync queue and its index disagree".into());
        }
        Ok(())
    }
}
