//! The delay fault for the chaos runner: a node's outgoing data packets are queued to
//! userspace with nftables (`queue`, NFQUEUE) and let go after a set delay, in order. These
//! kernels have no `sch_netem`, so this relay stands in for `tc netem delay`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::NetnsLab;

/// One thread holding a queue in every node's namespace (queue number = node index).
pub struct DelayRelay {
    delays: Arc<Mutex<Vec<Duration>>>,
    delayed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayRelay {
    /// Opens a queue in each of the lab's node namespaces. Fails where the kernel has no
    /// `nfnetlink_queue` or `iptables-nft` is missing.
    pub fn start(lab: &NetnsLab) -> Result<DelayRelay, String> {
        for idx in 0..lab.len() {
            lab.set_egress_queue(idx, None)?;
        }
        let namespaces: Vec<String> = (0..lab.len()).map(|idx| lab.netns(idx)).collect();
        let delays = Arc::new(Mutex::new(vec![Duration::ZERO; namespaces.len()]));
        let delayed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let thread = {
            let (delays, delayed, stop) = (delays.clone(), delayed.clone(), stop.clone());
            std::thread::spawn(move || match open_queues(&namespaces) {
                Ok(queues) => {
                    let _ = opened_tx.send(Ok(()));
                    relay(queues, &delays, &delayed, &stop);
                }
                Err(error) => {
                    let _ = opened_tx.send(Err(error));
                }
            })
        };
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(DelayRelay {
                delays,
                delayed,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("the delay relay thread died".into()),
        }
    }

    /// Delays node `idx`'s data sends by `delay` (zero: no delay), through the nftables
    /// rule in its namespace.
    pub fn set(&self, lab: &NetnsLab, idx: usize, delay: Duration) -> Result<(), String> {
        if let Ok(mut delays) = self.delays.lock() {
            delays[idx] = delay;
        }
        lab.set_egress_queue(idx, (!delay.is_zero()).then_some(idx as u16))
    }

    /// Packets held and let go so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::SeqCst)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open_queues(namespaces: &[String]) -> Result<Vec<nfq::Queue>, String> {
    let mut queues = Vec::new();
    for (idx, ns) in namespaces.iter().enumerate() {
        let num = idx as u16;
        // The netlink socket belongs to the namespace it is opened in; the queue is then
        // served from this thread.
        let mut queue = crate::netns::in_netns(ns, nfq::Queue::open)?
            .map_err(|e| format!("NFQUEUE in {ns}: {e}"))?;
        queue
            .bind(num)
            .map_err(|e| format!("NFQUEUE bind in {ns}: {e}"))?;
        // Only the packet's metadata comes up; a full queue lets packets through.
        let _ = queue.set_copy_range(num, 0);
        let _ = queue.set_fail_open(num, true);
        let _ = queue.set_queue_max_len(num, 4096);
        queue.set_nonblocking(true);
        queues.push(queue);
    }
    Ok(queues)
}

fn relay(
    mut queues: Vec<nfq::Queue>,
    delays: &Mutex<Vec<Duration>>,
    delayed: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut held: Vec<VecDeque<(Instant, nfq::Message)>> =
        queues.iter().map(|_| VecDeque::new()).collect();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let current = delays.lock().map(|d| d.clone()).unwrap_or_default();
        for (idx, queue) in queues.iter_mut().enumerate() {
            while let Ok(mut message) = queue.recv() {
                message.set_verdict(nfq::Verdict::Accept);
                held[idx].push_back((now + current[idx], message));
            }
            // A cleared delay lets everything held go at once.
            while held[idx]
                .front()
                .is_some_and(|(at, _)| *at <= now || current[idx].is_zero())
            {
                if let Some((_, message)) = held[idx].pop_front() {
                    // Counted before it goes: whoever sees the packet's effect sees the count.
                    delayed.fetch_add(1, Ordering::SeqCst);
                    let _ = queue.verdict(message);
                }
            }
        }
        // The relay's tick: delays are kept to about a millisecond.
        std::thread::sleep(Duration::from_millis(1));
    }
    for (idx, queue) in queues.iter_mut().enumerate() {
        for (_, message) in held[idx].drain(..) {
            let _ = queue.verdict(message);
        }
    }
}
