//! Answers remembered for one snapshot: a UDP query whose bytes after its ID were answered
//! before gets the same answer bytes again, with its own ID, without decoding or encoding.
//!
//! The answer is a function of the snapshot and of the request's bytes, and the ID is the only
//! part of those bytes the answer merely echoes (the RD and CD bits it also echoes are part of
//! the key), as long as no name in the request is compressed: a compression pointer may point
//! into the ID, and then the ID changes what the request says. So only a request of one
//! uncompressed question, and at most an OPT record with the root name, is remembered, and a
//! remembered answer is exactly what `respond` would compute again. The cache
//! is emptied whenever the snapshot changes, and when it is full: a flood of distinct queries
//! costs what it cost without a cache, and the cache never holds more than `MAX_ENTRIES`.

use std::collections::HashMap;

use hickory_proto::op::ResponseCode;

/// Enough for every name and type a co-op's zone is asked for; at most about 1 MiB.
const MAX_ENTRIES: usize = 512;
/// Longer queries are answered but not remembered: real ones are a few dozen bytes.
const MAX_KEY: usize = 512;
/// The ID: the first two bytes of a message.
const ID_LEN: usize = 2;
const HEADER_LEN: usize = 12;

#[derive(Debug, Default)]
pub(crate) struct AnswerCache {
    entries: HashMap<Box<[u8]>, Remembered>,
}

/// A clone starts empty: each server loop remembers its own answers.
impl Clone for AnswerCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

#[derive(Debug)]
struct Remembered {
    /// The whole answer; its first two bytes (an old ID) are replaced on each use.
    answer: Box<[u8]>,
    rcode: ResponseCode,
}

impl AnswerCache {
    /// Forgets every answer: the snapshot they came from is gone.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Writes the remembered answer to `query` into `out`, with the query's ID, and returns
    /// its rcode; None when this query was not answered before.
    pub(crate) fn answer(&self, query: &[u8], out: &mut Vec<u8>) -> Option<ResponseCode> {
        let (id, key) = (query.get(..ID_LEN)?, query.get(ID_LEN..)?);
        let remembered = self.entries.get(key)?;
        out.clear();
        out.extend_from_slice(id);
        out.extend_from_slice(remembered.answer.get(ID_LEN..)?);
        Some(remembered.rcode)
    }

    /// Remembers `answer` (with rcode `rcode`) as the answer to `query`.
    pub(crate) fn remember(&mut self, query: &[u8], answer: &[u8], rcode: ResponseCode) {
        let Some(key) = query.get(ID_LEN..) else {
            return;
        };
        if key.len() > MAX_KEY || answer.len() < ID_LEN || !plain(query) {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        let remembered = Remembered {
            answer: answer.into(),
            rcode,
        };
        self.entries.insert(key.into(), remembered);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Whether `query` names nothing through a compression pointer: one question with an
/// uncompressed name, no answer or authority records, and at most one additional record, an
/// OPT (type 41) owned by the root name. Reads only the bytes after the ID, so two queries
/// that differ only in their ID are both plain or both not.
fn plain(query: &[u8]) -> bool {
    let count = |at: usize| {
        query
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let counts = (count(4), count(6), count(8), count(10));
    let additionals = match counts {
        (Some(1), Some(0), Some(0), Some(additionals @ (0 | 1))) => additionals,
        _ => return false,
    };
    // The question's name: labels of at most 63 bytes (the two top bits clear), then the root.
    let mut at = HEADER_LEN;
    loop {
        match query.get(at) {
            Some(0) => break,
            Some(&len) if len & 0xC0 == 0 => at += 1 + usize::from(len),
            _ => return false,
        }
    }
    // The root byte, then the question's type and class.
    let after_question = at + 1 + 4;
    match additionals {
        0 => query.len() >= after_question,
        _ => {
            let opt = query.get(after_question..after_question + 3);
            opt == Some(&[0, 0, 41][..])
        }
    }
}
