//! Detaching uprobes on a thread of its own, one after the other (why: see [`Detacher`]).

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    mpsc, Arc,
};

use aya::programs::uprobe::UProbeLink;

/// Detaches uprobes on a thread of its own, one after the other.
///
/// The kernel makes each detach wait for an RCU grace period, under a lock that all uprobe
/// perf events share: about 0.1 s per probe on a busy machine, measured (strace of `close`),
/// and no faster from several threads. Done where the probes are managed, a process's exit
/// would stall event handling for half a second. And a SIGKILL that lands while the kernel
/// restores a probe site makes it give up on that uprobe ("failed to unregister, leaking
/// uprobe": its breakpoint stays in the target), so every probe waiting on a thread of a
/// killed agent would leak; hence one thread, and one probe in flight.
pub struct Detacher {
    tx: Option<mpsc::Sender<Vec<UProbeLink>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Probes handed over and not detached yet.
    pending: Arc<AtomicUsize>,
}

impl Detacher {
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Vec<UProbeLink>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let left = pending.clone();
        let thread = std::thread::Builder::new()
            .name("obs-detach".into())
            .spawn(move || {
                for links in rx {
                    for link in links {
                        drop(link);
                        left.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            });
        let (tx, thread) = match thread {
            Ok(thread) => (Some(tx), Some(thread)),
            Err(e) => {
                log::warn!("no thread to detach probes on ({e}); they are detached inline");
                (None, None)
            }
        };
        Self {
            tx,
            thread,
            pending,
        }
    }

    /// Hands `links` to the detaching thread (or detaches them here if there is none).
    pub fn detach(&self, links: Vec<UProbeLink>) {
        if links.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            let n = links.len();
            self.pending.fetch_add(n, Ordering::Relaxed);
            // The thread only ends when `tx` is dropped; if it died, the links come back in
            // the error and are dropped (detached) here.
            if tx.send(links).is_err() {
                self.pending.fetch_sub(n, Ordering::Relaxed);
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn closed(&self) -> bool {
        self.tx.is_none()
    }

    /// Hands over `links`, the last ones, and lets the thread end when it has detached them
    /// and everything handed over before.
    pub fn close(&mut self, links: Vec<UProbeLink>) -> Detaching {
        if !links.is_empty() {
            log::info!("detaching {} uprobes", links.len());
        }
        self.detach(links);
        self.tx = None;
        Detaching(self.thread.take())
    }
}

/// Uprobes being detached at shutdown.
pub struct Detaching(Option<std::thread::JoinHandle<()>>);

impl Detaching {
    /// Nothing to wait for.
    pub fn none() -> Self {
        Self(None)
    }

    /// Returns when every uprobe is detached.
    pub fn wait(self) {
        if let Some(thread) = self.0 {
            let _ = thread.join();
        }
    }
}
