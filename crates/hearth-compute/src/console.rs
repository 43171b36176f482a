//! Interactive serial consoles on a VM's host: one hub per running VM holds QEMU's single
//! console connection (`console.sock`) and shares it among every attachment. All of them
//! hear the guest; one at a time holds the keyboard (the first that may type, and after it
//! leaves, the next one that types), and the others' keys are dropped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hearth_state::files::{ConsoleAttach, ConsoleEvent, ConsoleSession, FileError};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Mutex, broadcast, mpsc, watch};

/// How much of the log a new attachment sees first, so its screen is not blank.
pub const CONSOLE_TAIL: u64 = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Who holds the keyboard: an attachment's number and the name it attached with.
type Holder = Option<(u64, String)>;

/// The console hubs of this host's running VMs, made on the first attachment and gone with
/// the last.
#[derive(Debug, Default)]
pub struct Consoles {
    hubs: Mutex<HashMap<String, Weak<Hub>>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Hub {
    /// What the guest writes; closed when QEMU's end of the socket closes.
    output: broadcast::WeakSender<Vec<u8>>,
    /// Keystrokes for the guest, from the attachment holding the keyboard.
    keys: mpsc::Sender<Vec<u8>>,
    writer: watch::Sender<Holder>,
}

impl Consoles {
    /// Attachments live now, over all VMs.
    pub async fn attached(&self) -> usize {
        let hubs = self.hubs.lock().await;
        hubs.values().map(|hub| hub.strong_count()).sum()
    }

    /// Attaches to the console of VM `attach.vm` under `root` (the driver's VM directories).
    pub async fn attach(
        &self,
        root: &Path,
        attach: ConsoleAttach,
    ) -> Result<ConsoleSession, FileError> {
        let vm = attach.vm.clone();
        let socket = hearth_qemu::driver::console_socket(root, &vm)
            .ok_or_else(|| FileError::BadName(format!("`{vm}` is not a VM id")))?;
        let (hub, output) = self.hub(&vm, &socket).await?;
        let tail = log_tail(root, &vm).await;
        let (events_tx, events) = mpsc::channel(64);
        let (input, keys) = mpsc::channel(64);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let session = Attachment {
            hub,
            id,
            who: attach.who,
            may_write: attach.may_write,
        };
        tokio::spawn(session.run(output, tail, events_tx, keys));
        Ok(ConsoleSession { events, input })
    }

    /// The hub of `vm`, connected to QEMU's socket, and a receiver of its output.
    async fn hub(
        &self,
        vm: &str,
        socket: &Path,
    ) -> Result<(Arc<Hub>, broadcast::Receiver<Vec<u8>>), FileError> {
        let mut hubs = self.hubs.lock().await;
        hubs.retain(|_, hub| hub.strong_count() > 0);
        if let Some(hub) = hubs.get(vm).and_then(Weak::upgrade)
            && let Some(output) = hub.output.upgrade()
        {
            return Ok((hub, output.subscribe()));
        }
        let gone = |why: String| {
            FileError::NotFound(format!(
                "{vm} has no console to attach to here ({why}): it does not run on this host, or it was started before interactive consoles (restart it to get one)"
            ))
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(gone(error.to_string())),
            Err(_) => return Err(gone("QEMU did not take the connection".into())),
        };
        let (output, receiver) = broadcast::channel(256);
        let (keys, keys_rx) = mpsc::channel(64);
        let hub = Arc::new(Hub {
            output: output.downgrade(),
            keys,
            writer: watch::Sender::new(None),
        });
        tokio::spawn(run_hub(stream, output, keys_rx));
        hubs.insert(vm.to_owned(), Arc::downgrade(&hub));
        Ok((hub, receiver))
    }
}

/// Carries bytes between QEMU's socket and the hub until either ends: the socket when QEMU
/// stops, the keys when the last attachment leaves.
async fn run_hub(
    stream: UnixStream,
    output: broadcast::Sender<Vec<u8>>,
    mut keys: mpsc::Receiver<Vec<u8>>,
) {
    let (mut read, mut write) = stream.into_split();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                // No attachment listening is fine: the log has it.
                Ok(n) => { let _ = output.send(buf[..n].to_vec()); }
            },
            key = keys.recv() => match key {
                Some(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
}

/// The last [`CONSOLE_TAIL`] bytes of the VM's log, from the start of a line.
async fn log_tail(root: &Path, vm: &str) -> Vec<u8> {
    let Some(path) = hearth_qemu::driver::console_log(root, vm) else {
        return Vec::new();
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return Vec::new();
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(CONSOLE_TAIL);
    let mut bytes = Vec::new();
    if file.seek(std::io::SeekFrom::Start(from)).await.is_err()
        || file.read_to_end(&mut bytes).await.is_err()
    {
        return Vec::new();
    }
    if from > 0
        && let Some(newline) = bytes.iter().position(|b| *b == b'\n')
    {
        bytes.drain(..=newline);
    }
    bytes
}

/// One attachment, run as a task until its caller leaves or the console closes.
struct Attachment {
    hub: Arc<Hub>,
    id: u64,
    who: String,
    may_write: bool,
}

impl Attachment {
    async fn run(
        self,
        mut output: broadcast::Receiver<Vec<u8>>,
        tail: Vec<u8>,
        events: mpsc::Sender<ConsoleEvent>,
        mut keys: mpsc::Receiver<Vec<u8>>,
    ) {
        let mut writer = self.hub.writer.subscribe();
        if self.may_write {
            self.claim();
        }
        writer.mark_changed();
        if !tail.is_empty() && events.send(ConsoleEvent::Output(tail)).await.is_err() {
            self.release();
            return;
        }
        loop {
            let event = tokio::select! {
                got = output.recv() => match got {
                    Ok(bytes) => ConsoleEvent::Output(bytes),
                    Err(broadcast::error::RecvError::Lagged(n)) => ConsoleEvent::Output(
                        format!("\r\n[hearth: {n} pieces of output skipped: this attachment read too slowly]\r\n").into_bytes(),
                    ),
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = events.send(ConsoleEvent::Closed(
                            "the console closed: the VM stopped, restarted or moved".into(),
                        )).await;
                        break;
                    }
                },
                changed = writer.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let holder = writer.borrow_and_update().clone();
                    ConsoleEvent::Writer {
                        you: holder.as_ref().is_some_and(|(id, _)| *id == self.id),
                        name: holder.map(|(_, name)| name),
                    }
                },
                key = keys.recv() => match key {
                    Some(bytes) => {
                        if self.may_write && self.claim() && self.hub.keys.send(bytes).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    None => break,
                },
            };
            if events.send(event).await.is_err() {
                break;
            }
        }
        self.release();
    }

    /// Takes the keyboard if nobody holds it; whether this attachment holds it now.
    fn claim(&self) -> bool {
        let mut mine = false;
        self.hub.writer.send_if_modified(|holder| match holder {
            Some((id, _)) => {
                mine = *id == self.id;
                false
            }
            None => {
                *holder = Some((self.id, self.who.clone()));
                mine = true;
                true
            }
        });
        mine
    }

    /// Gives the keyboard back if this attachment holds it.
    fn release(&self) {
        self.hub.writer.send_if_modified(|holder| {
            let mine = holder.as_ref().is_some_and(|(id, _)| *id == self.id);
            if mine {
                *holder = None;
            }
            mine
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    fn attach(who: &str, may_write: bool) -> ConsoleAttach {
        ConsoleAttach {
            vm: "vm-1".into(),
            who: who.into(),
            may_write,
        }
    }

    /// The next event that is not output, skipping output.
    async fn next_writer(session: &mut ConsoleSession) -> ConsoleEvent {
        loop {
            match session.events.recv().await {
                Some(ConsoleEvent::Output(_)) => continue,
                Some(other) => return other,
                None => panic!("the session ended"),
            }
        }
    }

    /// Waits until the session hears that `name` holds the keyboard (`you`: it is this one).
    async fn until_writer(session: &mut ConsoleSession, name: Option<&str>, you: bool) {
        let want = ConsoleEvent::Writer {
            name: name.map(str::to_owned),
            you,
        };
        while next_writer(session).await != want {}
    }

    /// Reads from the fake QEMU until `want` has arrived; what it read.
    async fn read_until(qemu: &mut UnixStream, want: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(want.len()).any(|w| w == want) {
            let n = qemu.read(&mut buf).await.unwrap();
            assert!(n > 0, "the hub closed the socket; got {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// A stand-in for QEMU's socket end (the real one is driven in the agent's console
    /// tests): every attachment hears the guest, only the first writer's keys reach it,
    /// and when it leaves, the next one to type takes the keyboard.
    #[tokio::test]
    async fn everyone_hears_and_one_types_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("vm-1")).unwrap();
        std::fs::write(root.path().join("vm-1/console.log"), "old line\n").unwrap();
        let listener = UnixListener::bind(root.path().join("vm-1/console.sock")).unwrap();
        let consoles = Consoles::default();
        let mut alice = consoles
            .attach(root.path(), attach("alice", true))
            .await
            .unwrap();
        let (mut qemu, _) = listener.accept().await.unwrap();
        assert_eq!(
            alice.events.recv().await,
            Some(ConsoleEvent::Output(b"old line\n".to_vec()))
        );
        assert_eq!(
            next_writer(&mut alice).await,
            ConsoleEvent::Writer {
                name: Some("alice".into()),
                you: true
            }
        );
        let mut bob = consoles
            .attach(root.path(), attach("bob", true))
            .await
            .unwrap();
        let mut eve = consoles
            .attach(root.path(), attach("eve", false))
            .await
            .unwrap();
        until_writer(&mut bob, Some("alice"), false).await;
        until_writer(&mut eve, Some("alice"), false).await;
        assert_eq!(consoles.attached().await, 3);
        // Bob's and the read-only Eve's keys are dropped; Alice's arrive.
        bob.input.send(b"bob".to_vec()).await.unwrap();
        eve.input.send(b"eve".to_vec()).await.unwrap();
        alice.input.send(b"alice\r".to_vec()).await.unwrap();
        let typed = read_until(&mut qemu, b"alice\r").await;
        assert_eq!(typed, b"alice\r", "only the writer's keys reach the guest");
        qemu.write_all(b"guest says hi").await.unwrap();
        for session in [&mut alice, &mut bob, &mut eve] {
            let mut heard = Vec::new();
            while !heard.ends_with(b"guest says hi") {
                if let Some(ConsoleEvent::Output(bytes)) = session.events.recv().await {
                    heard.extend(bytes);
                }
            }
        }
        // Alice leaves: nobody holds the keyboard until Bob types.
        drop(alice);
        until_writer(&mut bob, None, false).await;
        bob.input.send(b"bob now".to_vec()).await.unwrap();
        assert_eq!(read_until(&mut qemu, b"bob now").await, b"bob now");
        until_writer(&mut bob, Some("bob"), true).await;
        until_writer(&mut eve, Some("bob"), false).await;
        // QEMU goes away: every attachment hears why.
        drop(qemu);
        // (Bob's attachment ending gives the keyboard back, which Eve may hear first.)
        for session in [&mut bob, &mut eve] {
            let closed = loop {
                match next_writer(session).await {
                    ConsoleEvent::Writer { .. } => continue,
                    other => break other,
                }
            };
            assert!(matches!(closed, ConsoleEvent::Closed(_)), "{closed:?}");
            assert_eq!(session.events.recv().await, None, "nothing after the end");
        }
    }

    #[tokio::test]
    async fn a_vm_without_a_console_socket_says_why() {
        let root = tempfile::tempdir().unwrap();
        let consoles = Consoles::default();
        let error = consoles
            .attach(root.path(), attach("alice", true))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("no console"), "{error}");
        let bad = ConsoleAttach {
            vm: "../etc".into(),
            ..attach("alice", true)
        };
        assert!(matches!(
            consoles.attach(root.path(), bad).await,
            Err(FileError::BadName(_))
        ));
    }
}
