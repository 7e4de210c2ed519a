//! Group commit, the part both backends share: mutations wait in a queue for a writer task,
//! which takes what is waiting (up to [`GroupCommit::max`], optionally waiting
//! [`GroupCommit::wait`] for more) and hands the group to its backend's [`CommitGroup`], which
//! commits it as one transaction and answers every mutation after its COMMIT.
//!
//! With several writers (PostgreSQL), a mutation goes to the writer its MSISDN hashes to: the
//! requests of one account keep their order and never wait for each other's row lock across
//! writers.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::{
    Committed, Decide, GroupCommit, GroupCommitCounts, MutateFailure, RequestKey, StoreError,
};
use crate::lifecycle::Msisdn;

/// Mutations waiting for one writer at most, before callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;

/// One mutation waiting for a writer.
pub(crate) struct Job {
    pub(crate) msisdn: Msisdn,
    request_id: String,
    fingerprint: String,
    now: DateTime<Utc>,
    pub(crate) decide: Decide,
    reply: oneshot::Sender<Result<Committed, MutateFailure>>,
}

impl Job {
    pub(crate) fn key(&self) -> RequestKey<'_> {
        RequestKey {
            request_id: &self.request_id,
            fingerprint: &self.fingerprint,
            now: self.now,
        }
    }
}

/// How a backend commits a group: one result per job, in order, none before the COMMIT that
/// made it durable.
#[async_trait]
pub(crate) trait CommitGroup: Send + Sync + 'static {
    async fn commit_group(&self, group: &[Job]) -> Vec<Result<Committed, MutateFailure>>;
}

/// What the writers did since start (the metrics read it).
#[derive(Debug, Default)]
pub(crate) struct GroupCounters {
    groups: AtomicU64,
    mutations: AtomicU64,
    split: AtomicU64,
}

impl GroupCounters {
    /// A group that was rolled back and run again one mutation at a time.
    pub(crate) fn count_split(&self) {
        self.split.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> GroupCommitCounts {
        GroupCommitCounts {
            groups: self.groups.load(Ordering::Relaxed),
            mutations: self.mutations.load(Ordering::Relaxed),
            split: self.split.load(Ordering::Relaxed),
        }
    }
}

/// The queues of the writer tasks.
pub(crate) struct Writers {
    queues: Vec<mpsc::Sender<Job>>,
}

impl Writers {
    /// Starts `writers` (at least one) writer tasks committing through `backend`, counting
    /// into `counters`.
    pub(crate) fn start(
        writers: usize,
        settings: GroupCommit,
        backend: Arc<dyn CommitGroup>,
        counters: Arc<GroupCounters>,
    ) -> Self {
        let queues = (0..writers.max(1))
            .map(|_| {
                let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
                let task = write_loop(backend.clone(), queue, settings, counters.clone());
                tokio::spawn(task);
                jobs
            })
            .collect();
        Self { queues }
    }

    /// Queues the mutation for its writer and waits for its answer.
    pub(crate) async fn submit(
        &self,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            msisdn: msisdn.clone(),
            request_id: key.request_id.to_owned(),
            fingerprint: key.fingerprint.to_owned(),
            now: key.now,
            decide: decide.clone(),
            reply,
        };
        let queue = &self.queues[self.writer_of(msisdn)];
        let stopped = || MutateFailure::Store(StoreError::Unavailable("the writer stopped".into()));
        queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn writer_of(&self, msisdn: &Msisdn) -> usize {
        if self.queues.len() == 1 {
            return 0;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        msisdn.as_str().hash(&mut hasher);
        (hasher.finish() % self.queues.len() as u64) as usize
    }
}

/// One writer task: takes the mutations waiting, has them committed, replies.
async fn write_loop(
    backend: Arc<dyn CommitGroup>,
    mut queue: mpsc::Receiver<Job>,
    settings: GroupCommit,
    counters: Arc<GroupCounters>,
) {
    let max = settings.max.max(1);
    let mut group = Vec::with_capacity(max);
    while queue.recv_many(&mut group, max).await > 0 {
        if !settings.wait.is_zero() && group.len() < max {
            // `recv_many` is cancel-safe: a timeout loses no job.
            let until = tokio::time::Instant::now() + settings.wait;
            while group.len() < max {
                let room = max - group.len();
                let more = queue.recv_many(&mut group, room);
                match tokio::time::timeout_at(until, more).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let results = backend.commit_group(&group).await;
        tracing::debug!(mutations = group.len(), "group committed");
        counters.groups.fetch_add(1, Ordering::Relaxed);
        counters
            .mutations
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        for (job, result) in group.drain(..).zip(results) {
            // A caller that went away (cancelled request) needs no answer.
            let _ = job.reply.send(result);
        }
    }
}
