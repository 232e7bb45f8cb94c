//! The one resumable-batch mechanism: a stage splits its items into chunks and supplies the
//! work for one chunk; this module saves each finished chunk, skips the chunks an interrupted
//! run finished, shows progress, and joins the chunks into the output tables at the end.
//!
//! Work lives in `<run>/_work/<stage>-<fingerprint>/`: chunk `k` leaves one part per output
//! table (`<table>-part-k.parquet`) and then, last, a marker (`chunk-k.json`) with its row
//! counts and tally. A chunk counts as finished only when its marker exists, so a run killed
//! while writing a part redoes that chunk. A changed configuration or input has another
//! fingerprint and never reuses these parts.

use std::ops::Range;

use anyhow::{Context as _, Result, bail};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::context::{Context, Tally};
use crate::io::parquet::{self, TableWriter};

/// How a stage's items are cut into chunks (each chunk is saved as a unit).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunks(Vec<Range<usize>>);

impl Chunks {
    /// `n` items in chunks of `size` (the last may be smaller).
    pub fn even(n: usize, size: usize) -> Chunks {
        let size = size.max(1);
        Chunks((0..n).step_by(size).map(|start| start..(start + size).min(n)).collect())
    }

    /// Chunks of at most `size` consecutive items that never mix two groups (items of a group
    /// must be consecutive): a cloak's batch never mixes two users.
    pub fn grouped<T, K: PartialEq>(items: &[T], size: usize, group: impl Fn(&T) -> K) -> Chunks {
        let size = size.max(1);
        let mut ranges = Vec::new();
        let mut start = 0;
        for i in 1..=items.len() {
            if i == items.len() || i - start == size || group(&items[i]) != group(&items[start]) {
                ranges.push(start..i);
                start = i;
            }
        }
        Chunks(ranges)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a finished chunk left: written last, so its presence means the chunk is whole.
#[derive(Serialize, Deserialize)]
struct Marker {
    items: usize,
    rows: Vec<usize>,
    tally: Tally,
}

impl Context<'_> {
    /// Runs `work` on every chunk of `items` not finished by an earlier run, then writes each
    /// output slot of `outputs` (slot and schema) as the chunks' parts joined in order.
    /// `work` returns one list of batches per output, in the order of `outputs`, and counts
    /// the chunk's failures in the tally it is given. Returns how many chunks were resumed.
    pub fn resumable<T>(
        &mut self,
        items: &[T],
        chunks: &Chunks,
        unit: &str,
        outputs: &[(&str, SchemaRef)],
        mut work: impl FnMut(&[T], &mut Tally) -> Result<Vec<Vec<RecordBatch>>>,
    ) -> Result<usize> {
        let dir = self.run_dir.child(&format!("_work/{}-{}", self.stage, &self.fingerprint[..16]));
        let tables: Vec<String> = outputs.iter().map(|(slot, _)| self.output_table(slot).map(str::to_owned)).collect::<Result<_>>()?;
        let part = |table: &str, k: usize| format!("{table}-part-{k:06}");
        let marker = |k: usize| format!("chunk-{k:06}.json");
        let mut progress = self.progress(items.len() as u64, unit);
        let mut resumed = 0;
        for (k, range) in chunks.0.iter().enumerate() {
            let chunk = &items[range.clone()];
            if dir.exists(&marker(k))? {
                let done: Marker = serde_json::from_slice(&dir.get(&marker(k))?).with_context(|| format!("{}: unreadable", dir.url_of(&marker(k))))?;
                if done.items != chunk.len() {
                    bail!("{}: the chunk had {} items, now {}", dir.url_of(&marker(k)), done.items, chunk.len());
                }
                self.tally.merge(done.tally);
                resumed += 1;
            } else {
                let mut tally = Tally::default();
                let produced = work(chunk, &mut tally)?;
                if produced.len() != outputs.len() {
                    bail!("stage {}: a chunk produced {} tables, expected {}", self.stage, produced.len(), outputs.len());
                }
                let mut rows = Vec::new();
                for ((table, (_, schema)), batches) in tables.iter().zip(outputs).zip(&produced) {
                    rows.push(parquet::write(&dir, &part(table, k), schema.clone(), batches)?);
                }
                let done = Marker { items: chunk.len(), rows, tally: tally.clone() };
                dir.put(&marker(k), Bytes::from(serde_json::to_vec(&done)?))?;
                self.tally.merge(tally);
            }
            progress.add(chunk.len() as u64);
            if crate::runtime::sigterm_received() {
                bail!("stage {}: stopped by SIGTERM after saving chunk {} of {}; a rerun resumes from there", self.stage, k + 1, chunks.len());
            }
        }
        progress.finish();
        if resumed > 0 {
            self.log(&format!("resumed: {resumed} of {} chunks were done by an interrupted run", chunks.len()));
        }
        for (table, (_, schema)) in tables.iter().zip(outputs) {
            let mut writer = TableWriter::create(self.run_dir, table, schema.clone())?;
            for k in 0..chunks.len() {
                for batch in parquet::read(&dir, &part(table, k))? {
                    writer.write(&batch)?;
                }
            }
            writer.finish()?;
        }
        dir.delete_all()?;
        self.run_dir.child("_work").remove_if_empty();
        Ok(resumed)
    }
}

/// Feeds `items` through `prepare` and then `consume`, in order. With `ahead`, item k+1 is
/// prepared on another thread while `consume` works on item k: a batch's pictures are decoded
/// and cropped while the device runs the model on the batch before. `state` is lent to each
/// `prepare` in turn (one at a time), and a panic in `prepare` is raised again here.
pub fn one_ahead<S: Send, I: Send, P: Send>(
    state: &mut S,
    items: impl IntoIterator<Item = I>,
    ahead: bool,
    prepare: impl Fn(&mut S, I) -> P + Sync,
    mut consume: impl FnMut(P) -> Result<()>,
) -> Result<()> {
    let mut items = items.into_iter();
    if !ahead {
        return items.try_for_each(|item| consume(prepare(state, item)));
    }
    std::thread::scope(|scope| {
        let prepare = &prepare;
        let mut lent: Option<&mut S> = Some(state);
        let mut next = items.next().map(|item| prepare(lent.as_deref_mut().expect("the state is here"), item));
        while let Some(current) = next.take() {
            let worker = items.next().map(|item| {
                let state = lent.take().expect("the state is here");
                scope.spawn(move || {
                    let prepared = prepare(state, item);
                    (state, prepared)
                })
            });
            // On an error the worker's item is dropped unconsumed when the scope joins it.
            consume(current)?;
            if let Some(worker) = worker {
                let (state, prepared) = worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                lent = Some(state);
                next = Some(prepared);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ahead_consumes_every_item_in_order_and_prepares_the_next_on_another_thread() {
        let caller = std::thread::current().id();
        for ahead in [false, true] {
            let mut threads = Vec::new();
            let mut consumed = Vec::new();
            one_ahead(
                &mut threads,
                0..5,
                ahead,
                |threads, i| {
                    threads.push(std::thread::current().id());
                    i * 10
                },
                |p| {
                    consumed.push(p);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(consumed, vec![0, 10, 20, 30, 40]);
            assert_eq!(threads.len(), 5, "state is lent to every prepare");
            // The first item is prepared before there is anything to overlap with.
            let elsewhere = threads.iter().filter(|&&t| t != caller).count();
            assert_eq!(elsewhere, if ahead { 4 } else { 0 }, "ahead = {ahead}");
        }
    }

    #[test]
    fn one_ahead_stops_at_the_first_error_and_raises_a_worker_panic() {
        let mut consumed = 0;
        let err = one_ahead(
            &mut (),
            0..5,
            true,
            |_, i| i,
            |i| {
                consumed += 1;
                if i == 2 { anyhow::bail!("batch {i} failed") } else { Ok(()) }
            },
        );
        assert_eq!(err.unwrap_err().to_string(), "batch 2 failed");
        assert_eq!(consumed, 3);
        let panicked = std::panic::catch_unwind(|| one_ahead(&mut (), 0..3, true, |_, i| if i == 1 { panic!("bad picture") } else { i }, |_| Ok(())));
        assert!(panicked.is_err());
    }

    #[test]
    fn chunks_cover_every_item_once_and_never_mix_groups() {
        assert_eq!(Chunks::even(5, 2), Chunks(vec![0..2, 2..4, 4..5]));
        assert_eq!(Chunks::even(0, 2), Chunks(vec![]));
        let users = ["a", "a", "a", "b", "c", "c"];
        assert_eq!(Chunks::grouped(&users, 2, |u| *u), Chunks(vec![0..2, 2..3, 3..4, 4..6]));
        assert_eq!(Chunks::grouped(&[] as &[&str], 2, |u| *u), Chunks(vec![]));
    }
}
