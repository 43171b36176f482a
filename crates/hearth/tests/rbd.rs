//! The real single-node Ceph the RBD tests run on (`hearth_testkit::ceph`: Debian's
//! ceph-mon, ceph-mgr and a memstore ceph-osd), and the two things an RBD disk stands on,
//! with QEMU's own rbd driver (qemu-block-extra): an image imported once and protected as a
//! snapshot, a VM's disk as a clone of it that QEMU writes; and Ceph's fencing, a client
//! put on the OSD blocklist that can write no more while a new client reads what it wrote
//! before.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hearth_testkit::ceph::Ceph;
use hearth_testkit::eventually;

/// qemu-io on an image, driven line by line through its standard input.
struct Client {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn open(image: &str) -> Client {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", image])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run qemu-io");
        let (send, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = send.send(line);
                }
            });
        }
        Client { child, lines }
    }

    /// Sends `command`, then the first line saying how it went (`wrote …`, `… failed …`),
    /// if one comes within `wait`.
    fn ask(&mut self, command: &str, wait: Duration) -> Option<String> {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("wrote") || line.contains("failed") => {
                    return Some(line);
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the first 4 KiB of `image` hold `byte`, read by a new client.
fn holds(image: &str, byte: u8) -> bool {
    let output = Command::new("qemu-io")
        .args(["-f", "raw", "-c", &format!("read -P {byte:#x} 0 4k"), image])
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success()
        && text.contains("read 4096/4096")
        && !text.contains("Pattern verification failed")
}

#[test]
fn a_clone_of_a_protected_image_takes_writes_until_its_client_is_blocklisted() {
    let ceph = Ceph::start();
    let guest = hearth_testkit::test_guest();
    let status = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(guest.join("base.qcow2"))
        .arg(ceph.qemu_name("tiny"))
        .status()
        .unwrap();
    assert!(status.success(), "qemu-img convert into RBD");
    ceph.rbd(&["snap", "create", "rbd/tiny@v1"]);
    ceph.rbd(&["snap", "protect", "rbd/tiny@v1"]);
    ceph.rbd(&["clone", "rbd/tiny@v1", "rbd/vm-1"]);
    let listed = ceph.rbd(&["ls", "-l", "rbd"]);
    assert!(listed.contains("rbd/tiny@v1"), "{listed}");

    let image = ceph.qemu_name("vm-1");
    let mut client = Client::open(&image);
    let said = client.ask("write -P 0x5a 0 4k", Duration::from_secs(60));
    assert!(
        said.as_deref()
            .is_some_and(|l| l.contains("wrote 4096/4096")),
        "{said:?}"
    );
    assert!(holds(&image, 0x5a));

    // Fenced: the client watching the image is put on the blocklist, as hearth will do to
    // a dead worker's client before its VM starts elsewhere.
    let watcher = eventually("the client's watch", Duration::from_secs(30), || {
        let status = ceph.rbd(&["status", "rbd/vm-1"]);
        (status.lines())
            .find_map(|l| l.trim().strip_prefix("watcher=")?.split_whitespace().next())
            .map(str::to_owned)
            .ok_or(status)
    });
    ceph.ceph(&["osd", "blocklist", "add", &watcher]);
    let said = client.ask("write -P 0x5b 0 4k", Duration::from_secs(30));
    // Refused at once (EBLOCKLISTED), not left hanging.
    assert!(
        said.as_deref().is_some_and(|l| l.contains("failed")),
        "a blocklisted client's write: {said:?}"
    );
    assert!(holds(&image, 0x5a), "the blocklisted write landed");
    assert!(!holds(&image, 0x5b));
}
