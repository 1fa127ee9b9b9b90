//! A write transaction as an overlay of pending puts and deletes over a
//! read view: the engines whose own transactions cannot be read while they
//! are built (sled, etcd) collect a transaction here and commit
//! [`Overlay::into_pending`] in one batch. Reads inside it see its own
//! writes; a scan merges them with the view's keys in order.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{KvResult, ReadTx, WriteTx};

/// Pending writes: `None` = deleted.
pub type Pending = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Pending writes over the committed state `base`.
pub struct Overlay<'a> {
    base: &'a dyn ReadTx,
    pending: Pending,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn ReadTx) -> Self {
        Overlay {
            base,
            pending: Pending::new(),
        }
    }

    /// The writes to commit.
    pub fn into_pending(self) -> Pending {
        self.pending
    }
}

impl ReadTx for Overlay<'_> {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> KvResult<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut over = self
            .pending
            .range::<[u8], _>((Bound::Included(start), hi))
            .peekable();
        let mut stopped = false;
        self.base.scan(start, end, &mut |k, v| {
            // Pending keys before this one come first.
            while let Some((ok, ov)) = over.next_if(|(ok, _)| ok.as_slice() < k) {
                if let Some(ov) = ov {
                    if !f(ok, ov) {
                        stopped = true;
                        return false;
                    }
                }
            }
            // A pending write shadows the same key of the base.
            let keep = match over.next_if(|(ok, _)| ok.as_slice() == k) {
                Some((_, Some(ov))) => f(k, ov),
                Some((_, None)) => true,
                None => f(k, v),
            };
            stopped = !keep;
            keep
        })?;
        if stopped {
            return Ok(());
        }
        for (ok, ov) in over {
            if let Some(ov) = ov {
                if !f(ok, ov) {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl WriteTx for Overlay<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> KvResult<()> {
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> KvResult<()> {
        self.pending.insert(key.to_vec(), None);
        Ok(())
    }
    fn as_read(&self) -> &dyn ReadTx {
        self
    }
}
