//! A minimal NBD client over a unix socket (fixed newstyle handshake, `NBD_OPT_GO`, simple
//! replies): enough to time single writes and flushes against a QEMU export one at a time,
//! which `qemu-img bench` only reports as a total.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const REP_ERROR_BIT: u32 = 1 << 31;
const TRANSMISSION_READ_ONLY: u16 = 1 << 1;
const TRANSMISSION_SEND_FLUSH: u16 = 1 << 2;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

/// One connection to a writable export, in the transmission phase.
pub struct NbdClient {
    stream: UnixStream,
    /// The export's size in bytes.
    pub size: u64,
    cookie: u64,
}

fn read_array<const N: usize>(stream: &mut UnixStream) -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    stream.read_exact(&mut bytes).context("NBD read")?;
    Ok(bytes)
}

fn read_u16(stream: &mut UnixStream) -> Result<u16> {
    Ok(u16::from_be_bytes(read_array(stream)?))
}

fn read_u32(stream: &mut UnixStream) -> Result<u32> {
    Ok(u32::from_be_bytes(read_array(stream)?))
}

fn read_u64(stream: &mut UnixStream) -> Result<u64> {
    Ok(u64::from_be_bytes(read_array(stream)?))
}

/// The `NBD_OPT_GO` option for `export`, asking for no extra information.
fn opt_go(export: &str) -> Vec<u8> {
    let mut data = Vec::new();
    data.extend((export.len() as u32).to_be_bytes());
    data.extend(export.as_bytes());
    data.extend(0u16.to_be_bytes());
    let mut option = Vec::new();
    option.extend(IHAVEOPT.to_be_bytes());
    option.extend(OPT_GO.to_be_bytes());
    option.extend((data.len() as u32).to_be_bytes());
    option.extend(data);
    option
}

/// A request header (28 bytes) followed by `payload`.
fn request(kind: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(28 + payload.len());
    bytes.extend(REQUEST_MAGIC.to_be_bytes());
    bytes.extend(0u16.to_be_bytes());
    bytes.extend(kind.to_be_bytes());
    bytes.extend(cookie.to_be_bytes());
    bytes.extend(offset.to_be_bytes());
    bytes.extend(length.to_be_bytes());
    bytes.extend(payload);
    bytes
}

impl NbdClient {
    /// Connects to the export `export` of the NBD server on the unix socket `path`.
    pub fn connect(path: &Path, export: &str) -> Result<NbdClient> {
        let mut stream =
            UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        if read_u64(&mut stream)? != NBDMAGIC || read_u64(&mut stream)? != IHAVEOPT {
            bail!("not a newstyle NBD server");
        }
        let offered = read_u16(&mut stream)?;
        if offered & FLAG_FIXED_NEWSTYLE == 0 {
            bail!("the NBD server does not speak fixed newstyle");
        }
        let flags = u32::from(offered & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        stream.write_all(&flags.to_be_bytes())?;
        stream.write_all(&opt_go(export))?;
        let (size, transmission) = Self::go_replies(&mut stream)?;
        if transmission & TRANSMISSION_READ_ONLY != 0 {
            bail!("the export {export} is read-only");
        }
        if transmission & TRANSMISSION_SEND_FLUSH == 0 {
            bail!("the export {export} takes no flush");
        }
        Ok(NbdClient {
            stream,
            size,
            cookie: 0,
        })
    }

    /// Reads the server's replies to `NBD_OPT_GO` up to its ACK: (size, transmission flags).
    fn go_replies(stream: &mut UnixStream) -> Result<(u64, u16)> {
        let mut export = None;
        loop {
            if read_u64(stream)? != OPTION_REPLY_MAGIC {
                bail!("bad NBD option reply");
            }
            let _option = read_u32(stream)?;
            let kind = read_u32(stream)?;
            let mut data = vec![0u8; read_u32(stream)? as usize];
            stream.read_exact(&mut data)?;
            if kind & REP_ERROR_BIT != 0 {
                bail!("NBD_OPT_GO refused: {}", String::from_utf8_lossy(&data));
            }
            if kind == REP_INFO && data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() {
                let size = u64::from_be_bytes(data[2..10].try_into()?);
                export = Some((size, u16::from_be_bytes(data[10..12].try_into()?)));
            }
            if kind == REP_ACK {
                return export.context("the NBD server sent no export information");
            }
        }
    }

    fn exchange(&mut self, kind: u16, offset: u64, length: u32, payload: &[u8]) -> Result<()> {
        self.cookie += 1;
        let bytes = request(kind, self.cookie, offset, length, payload);
        self.stream.write_all(&bytes).context("NBD write")?;
        let reply: [u8; 16] = read_array(&mut self.stream)?;
        let magic = u32::from_be_bytes(reply[0..4].try_into()?);
        let error = u32::from_be_bytes(reply[4..8].try_into()?);
        let cookie = u64::from_be_bytes(reply[8..16].try_into()?);
        if magic != SIMPLE_REPLY_MAGIC || cookie != self.cookie {
            bail!("bad NBD reply {reply:02x?}");
        }
        if error != 0 {
            bail!("NBD request {kind} at {offset} failed with errno {error}");
        }
        Ok(())
    }

    /// Writes `data` at `offset` and waits for the server's acknowledgement.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.exchange(CMD_WRITE, offset, data.len() as u32, data)
    }

    /// Asks the server to make every acknowledged write durable, and waits until it has.
    pub fn flush(&mut self) -> Result<()> {
        self.exchange(CMD_FLUSH, 0, 0, &[])
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        let _ = self.stream.write_all(&request(CMD_DISC, 0, 0, 0, &[]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_protocol_says() {
        let go = opt_go("disk0");
        assert_eq!(&go[..8], b"IHAVEOPT");
        assert_eq!(&go[8..12], &[0, 0, 0, 7]);
        // Name length, name, no information requests.
        assert_eq!(&go[12..16], &[0, 0, 0, 11]);
        assert_eq!(&go[16..20], &[0, 0, 0, 5]);
        assert_eq!(&go[20..25], b"disk0");
        assert_eq!(&go[25..], &[0, 0]);
        let write = request(CMD_WRITE, 9, 4096, 3, b"abc");
        assert_eq!(write.len(), 31);
        assert_eq!(&write[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&write[6..8], &[0, 1]);
        assert_eq!(&write[8..16], &9u64.to_be_bytes());
        assert_eq!(&write[16..24], &4096u64.to_be_bytes());
        assert_eq!(&write[24..28], &[0, 0, 0, 3]);
        assert_eq!(&write[28..], b"abc");
        assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
    }
}
