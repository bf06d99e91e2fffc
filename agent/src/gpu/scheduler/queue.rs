//! The queue of jobs waiting for the GPU: highest priority first, then arrival order; a job put
//! back (its worker died, or its batch failed as a whole) keeps its place. Pure: no clock, no
//! worker.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;

use edge_jobs::job::Job;

use super::Reply;

/// A job waiting, with the submitter's reply.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) job: Job,
    /// Whether the submitter wants the outputs (or only the receipt).
    pub(super) outputs: bool,
    /// Arrival order.
    pub(super) seq: u64,
    pub(super) reply: Reply,
    /// Runs alone, never in a batch: its last batch failed as a whole.
    pub(super) solo: bool,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// The heap's top is the highest priority, then the earliest arrival.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.job
            .priority
            .cmp(&other.job.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The queue.
#[derive(Debug, Default)]
pub(super) struct Queue {
    heap: BinaryHeap<Queued>,
    arrivals: u64,
}

impl Queue {
    /// Queues a new submission behind everything of its priority.
    pub(super) fn arrive(&mut self, job: Job, outputs: bool, reply: Reply) {
        self.arrivals += 1;
        self.heap.push(Queued {
            job,
            outputs,
            seq: self.arrivals,
            reply,
            solo: false,
        });
    }

    /// Puts a job back where its arrival puts it.
    pub(super) fn put_back(&mut self, queued: Queued) {
        self.heap.push(queued);
    }

    /// The best job.
    pub(super) fn pop(&mut self) -> Option<Queued> {
        self.heap.pop()
    }

    /// The best job, left in place.
    pub(super) fn peek(&self) -> Option<&Queued> {
        self.heap.peek()
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Takes out every job for which `take` holds (deadline passed, cancelled).
    pub(super) fn take_where(&mut self, take: impl Fn(&Job) -> bool) -> Vec<Queued> {
        if !self.heap.iter().any(|q| take(&q.job)) {
            return Vec::new();
        }
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
            .into_iter()
            .partition(|q| take(&q.job));
        self.heap = kept.into_iter().collect();
        taken
    }

    /// Empties the queue.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Queued> + '_ {
        self.heap.drain()
    }
}

/// Whether `job`'s deadline passed before `now_ms`.
pub(super) fn is_late(job: &Job, now_ms: u64) -> bool {
    job.deadline_unix_ms
        .is_some_and(|deadline| deadline < now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, priority: i32) -> Job {
        let mut job = edge_jobs::kernels::fma_peak(1, 1);
        job.id = id.into();
        job.priority = priority;
        job
    }

    fn arrive(queue: &mut Queue, id: &str, priority: i32) {
        let (reply, _) = tokio::sync::oneshot::channel();
        queue.arrive(job(id, priority), false, reply);
    }

    fn order(queue: &mut Queue) -> Vec<String> {
        std::iter::from_fn(|| queue.pop().map(|q| q.job.id)).collect()
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let mut queue = Queue::default();
        arrive(&mut queue, "low-1", 1);
        arrive(&mut queue, "high-1", 9);
        arrive(&mut queue, "low-2", 1);
        arrive(&mut queue, "high-2", 9);
        assert_eq!(order(&mut queue), ["high-1", "high-2", "low-1", "low-2"]);
    }

    #[test]
    fn a_job_put_back_keeps_its_place_ahead_of_later_arrivals() {
        let mut queue = Queue::default();
        arrive(&mut queue, "first", 5);
        arrive(&mut queue, "second", 5);
        let first = queue.pop().expect("first");
        arrive(&mut queue, "third", 5);
        queue.put_back(first);
        assert_eq!(order(&mut queue), ["first", "second", "third"]);
    }

    #[test]
    fn taking_out_leaves_the_rest_in_order() {
        let mut queue = Queue::default();
        for (id, priority) in [("a", 1), ("b", 5), ("c", 1), ("d", 5)] {
            arrive(&mut queue, id, priority);
        }
        let taken = queue.take_where(|job| job.id == "b" || job.id == "c");
        assert_eq!(taken.len(), 2);
        assert!(queue.take_where(|job| job.id == "zzz").is_empty());
        assert_eq!(order(&mut queue), ["d", "a"]);
    }

    #[test]
    fn a_deadline_is_late_only_once_passed() {
        let mut job = job("j", 1);
        assert!(!is_late(&job, u64::MAX), "no deadline is never late");
        job.deadline_unix_ms = Some(1_000);
        assert!(!is_late(&job, 1_000));
        assert!(is_late(&job, 1_001));
    }
}
