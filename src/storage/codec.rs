//! A small, versioned binary encoding of stream records and appends, shared by
//! the durable backends. Decoding is total: bad bytes are a `Corrupt` error.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use time::OffsetDateTime;

use super::{
    Append, Expiry, ForkOrigin, ProducerState, ProducerTuple, StorageError, StreamConfig,
    StreamRecord,
};

/// Appends little-endian fields to a buffer.
pub(crate) struct Writer<'a>(pub &'a mut BytesMut);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.put_u8(v);
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.put_u64_le(v);
        self
    }
    pub fn i128(&mut self, v: i128) -> &mut Self {
        self.0.put_i128_le(v);
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.put_u32_le(v.len() as u32);
        self.0.put_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.u8(1).str(s),
            None => self.u8(0),
        }
    }
}

/// Reads little-endian fields, failing with `Corrupt` past the end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("cannot decode {what}"))
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }
    pub fn position(&self) -> usize {
        self.at
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| corrupt("field"))?;
        let slice = &self.buf[self.at..end];
        self.at = end;
        Ok(slice)
    }
    pub fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64, StorageError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    pub fn i128(&mut self) -> Result<i128, StorageError> {
        let mut b = [0u8; 16];
        b.copy_from_slice(self.take(16)?);
        Ok(i128::from_le_bytes(b))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        self.take(u32::from_le_bytes(b) as usize)
    }
    pub fn string(&mut self) -> Result<String, StorageError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| corrupt("string"))
    }
    pub fn opt_string(&mut self) -> Result<Option<String>, StorageError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(corrupt("option")),
        }
    }
}

fn put_expiry(w: &mut Writer<'_>, expiry: Expiry) {
    match expiry {
        Expiry::Never => {
            w.u8(0);
        }
        Expiry::Ttl(secs) => {
            w.u8(1).u64(secs);
        }
        Expiry::At(at) => {
            w.u8(2).i128(at.unix_timestamp_nanos());
        }
    }
}

fn get_expiry(r: &mut Reader<'_>) -> Result<Expiry, StorageError> {
    match r.u8()? {
        0 => Ok(Expiry::Never),
        1 => Ok(Expiry::Ttl(r.u64()?)),
        2 => OffsetDateTime::from_unix_timestamp_nanos(r.i128()?)
            .map(Expiry::At)
            .map_err(|_| corrupt("expiry")),
        _ => Err(corrupt("expiry")),
    }
}

/// Encodes a stream's configuration.
pub(crate) fn put_config(w: &mut Writer<'_>, config: &StreamConfig) {
    w.u64(config.id).str(&config.content_type);
    put_expiry(w, config.expiry);
    match &config.fork {
        None => {
            w.u8(0);
        }
        Some(f) => {
            w.u8(1)
                .str(&f.source)
                .u64(f.anchor)
                .u64(f.sub_offset)
                .u64(f.position);
        }
    }
}

pub(crate) fn get_config(r: &mut Reader<'_>) -> Result<StreamConfig, StorageError> {
    let id = r.u64()?;
    let content_type = r.string()?;
    let expiry = get_expiry(r)?;
    let fork = match r.u8()? {
        0 => None,
        1 => Some(ForkOrigin {
            source: r.string()?,
            anchor: r.u64()?,
            sub_offset: r.u64()?,
            position: r.u64()?,
        }),
        _ => return Err(corrupt("fork origin")),
    };
    Ok(StreamConfig {
        id,
        content_type,
        expiry,
        fork,
    })
}

fn put_tuple(w: &mut Writer<'_>, tuple: Option<&ProducerTuple>) {
    match tuple {
        None => {
            w.u8(0);
        }
        Some(t) => {
            w.u8(1).str(&t.id).u64(t.epoch).u64(t.seq);
        }
    }
}

fn get_tuple(r: &mut Reader<'_>) -> Result<Option<ProducerTuple>, StorageError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(ProducerTuple {
            id: r.string()?,
            epoch: r.u64()?,
            seq: r.u64()?,
        })),
        _ => Err(corrupt("producer tuple")),
    }
}

/// Encodes a whole stream record (configuration and state).
pub(crate) fn put_record(w: &mut Writer<'_>, record: &StreamRecord) {
    w.u8(1); // record format version
    put_config(w, &record.config);
    w.u64(record.tail)
        .u8(u8::from(record.closed))
        .u8(u8::from(record.soft_deleted));
    put_tuple(w, record.closed_by.as_ref());
    w.opt_str(record.stream_seq.as_deref());
    w.u64(record.producers.len() as u64);
    let mut producers: Vec<_> = record.producers.iter().collect();
    producers.sort_by(|a, b| a.0.cmp(b.0));
    for (id, state) in producers {
        w.str(id).u64(state.epoch).u64(state.last_seq);
    }
}

pub(crate) fn get_record(r: &mut Reader<'_>) -> Result<StreamRecord, StorageError> {
    if r.u8()? != 1 {
        return Err(corrupt("record version"));
    }
    let config = get_config(r)?;
    let tail = r.u64()?;
    let closed = r.u8()? != 0;
    let soft_deleted = r.u8()? != 0;
    let closed_by = get_tuple(r)?;
    let stream_seq = r.opt_string()?;
    let count = r.u64()?;
    let mut producers = HashMap::new();
    for _ in 0..count {
        let id = r.string()?;
        producers.insert(
            id,
            ProducerState {
                epoch: r.u64()?,
                last_seq: r.u64()?,
            },
        );
    }
    Ok(StreamRecord {
        config,
        tail,
        closed,
        closed_by,
        stream_seq,
        producers,
        soft_deleted,
    })
}

/// Encodes the state part of an append (everything but the data, which follows).
pub(crate) fn put_append_state(w: &mut Writer<'_>, append: &Append) {
    w.u64(append.expected_tail);
    w.opt_str(append.stream_seq.as_deref());
    match &append.producer {
        None => {
            w.u8(0);
        }
        Some((id, state)) => {
            w.u8(1).str(id).u64(state.epoch).u64(state.last_seq);
        }
    }
    match &append.close {
        None => {
            w.u8(0);
        }
        Some(by) => {
            w.u8(1);
            put_tuple(w, by.as_ref());
        }
    }
}

/// Decodes the state part of an append; the data is what remains.
pub(crate) fn get_append_state(r: &mut Reader<'_>, stream_id: u64) -> Result<Append, StorageError> {
    let expected_tail = r.u64()?;
    let stream_seq = r.opt_string()?;
    let producer = match r.u8()? {
        0 => None,
        1 => Some((
            r.string()?,
            ProducerState {
                epoch: r.u64()?,
                last_seq: r.u64()?,
            },
        )),
        _ => return Err(corrupt("producer")),
    };
    let close = match r.u8()? {
        0 => None,
        1 => Some(get_tuple(r)?),
        _ => return Err(corrupt("close")),
    };
    let mut append = Append::new(stream_id, expected_tail, Bytes::new());
    (append.stream_seq, append.producer, append.close) = (stream_seq, producer, close);
    Ok(append)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let mut record = StreamRecord::new(
            StreamConfig {
                id: 9,
                content_type: "application/json".into(),
                expiry: Expiry::At(OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap()),
                fork: Some(ForkOrigin {
                    source: "/s".into(),
                    anchor: 3,
                    sub_offset: 2,
                    position: 5,
                }),
            },
            5,
        );
        record.closed = true;
        record.closed_by = Some(ProducerTuple {
            id: "p".into(),
            epoch: 1,
            seq: 2,
        });
        record.stream_seq = Some("007".into());
        record.producers.insert(
            "p".into(),
            ProducerState {
                epoch: 1,
                last_seq: 2,
            },
        );
        let mut buf = BytesMut::new();
        put_record(&mut Writer(&mut buf), &record);
        assert_eq!(get_record(&mut Reader::new(&buf)).unwrap(), record);
        for cut in 0..buf.len() {
            assert!(
                get_record(&mut Reader::new(&buf[..cut])).is_err(),
                "truncated at {cut}"
            );
        }
    }

    #[test]
    fn append_state_round_trips() {
        let append = Append::new(4, 10, Bytes::new())
            .with_stream_seq("a")
            .with_producer("p", ProducerState::new(0, 3))
            .closing(None);
        let mut buf = BytesMut::new();
        put_append_state(&mut Writer(&mut buf), &append);
        assert_eq!(get_append_state(&mut Reader::new(&buf), 4).unwrap(), append);
    }
}
