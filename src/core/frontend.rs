//! How a front-end consumes its job events: the [`FrontEnd`] trait and the [`pump`] that feeds
//! it, and the [`Deliveries`] handle the daemon stops at shutdown.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::edit::BoxFuture;
use super::jobs::{Engine, JobEvent, JobSpec, Outcome};

/// A front-end's delivery task, which goes on after intake stopped: stop it once the workers
/// are done, then await it.
pub struct Deliveries {
    pub task: tokio::task::JoinHandle<()>,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

impl Deliveries {
    /// For a front-end stopped before it started: nothing to deliver.
    pub fn none() -> Self {
        let (stop, _) = tokio::sync::oneshot::channel();
        Self {
            task: tokio::spawn(async {}),
            stop,
        }
    }
}

/// What a front-end does with its job events.
pub trait FrontEnd: Send + Sync + 'static {
    /// A worker took the job (typing indicators…); quick, runs in order.
    fn started(&self, spec: JobSpec) -> BoxFuture<'_, ()>;
    /// The job ended: post the result, or tell the user why there is none; runs alongside
    /// other deliveries. Returns whether the result was delivered.
    fn finished(self: Arc<Self>, outcome: Outcome) -> BoxFuture<'static, bool>;
}

/// Feeds job events to `front` until `stop` fires (then the events already queued are handled)
/// or the engine is gone, and waits for every delivery it started. A job without a result is
/// recorded as told once the front-end has answered it, so a restart does not tell it again.
pub async fn pump<F: FrontEnd>(
    front: Arc<F>,
    engine: Arc<Engine>,
    mut events: mpsc::Receiver<JobEvent>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut deliveries = tokio::task::JoinSet::new();
    let handle = |event: JobEvent, deliveries: &mut tokio::task::JoinSet<()>| match event {
        JobEvent::Started(spec) => Some(spec),
        JobEvent::Finished(outcome) => {
            let (engine, job) = (Arc::clone(&engine), outcome.job.clone());
            let finished = Arc::clone(&front).finished(outcome);
            deliveries.spawn(async move {
                if !finished.await {
                    engine.told(&job).await;
                }
            });
            None
        }
    };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => if let Some(spec) = handle(event, &mut deliveries) {
                    front.started(spec).await;
                },
                None => break,
            },
            _ = &mut stop => {
                while let Ok(event) = events.try_recv() {
                    if let Some(spec) = handle(event, &mut deliveries) {
                        front.started(spec).await;
                    }
                }
                break;
            }
            Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
        }
    }
    while deliveries.join_next().await.is_some() {}
}
