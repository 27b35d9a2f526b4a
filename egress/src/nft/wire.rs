//! nf_tables netlink messages, built by hand with the shape of libnftnl's
//! API: a [`Batch`] of messages (table, chain, set, set elements, rule),
//! each a `nlmsghdr` + `nfgenmsg` followed by attributes. Multi-byte
//! attribute values are big-endian, as nf_tables expects; nested attributes
//! carry `NLA_F_NESTED`. Constants are from `linux/netfilter/nf_tables.h`.

/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `_END`.
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
/// `nlmsghdr` flags.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// Create if missing.
pub const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

/// Protocol families (`nfgenmsg.nfgen_family`).
pub mod family {
    /// `NFPROTO_UNSPEC`.
    pub const UNSPEC: u8 = 0;
    /// `NFPROTO_INET` (IPv4 and IPv6).
    pub const INET: u8 = 1;
}

/// Message types (`NFT_MSG_*`).
#[allow(missing_docs)]
pub mod msg {
    pub const NEWTABLE: u16 = 0;
    pub const DELTABLE: u16 = 2;
    pub const NEWCHAIN: u16 = 3;
    pub const NEWRULE: u16 = 6;
    pub const DELRULE: u16 = 8;
    pub const NEWSET: u16 = 9;
    pub const NEWSETELEM: u16 = 12;
    pub const DELSETELEM: u16 = 14;
}

/// Attribute numbers (`NFTA_*`).
#[allow(missing_docs)]
pub mod attr {
    pub const TABLE_NAME: u16 = 1;
    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;
    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_ID: u16 = 10;
    pub const SET_TIMEOUT: u16 = 11;
    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    pub const SET_ELEM_LIST_SET: u16 = 2;
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const SET_ELEM_KEY: u16 = 1;
    pub const SET_ELEM_FLAGS: u16 = 3;
    pub const SET_ELEM_TIMEOUT: u16 = 4;
    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const LIST_ELEM: u16 = 1;
    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;
}

/// Set flags (`NFT_SET_*`).
pub mod set_flags {
    /// Elements are ranges.
    pub const INTERVAL: u32 = 0x4;
    /// Elements expire.
    pub const TIMEOUT: u32 = 0x10;
    /// Rules may add elements (`dynset`).
    pub const EVAL: u32 = 0x20;
}

/// Element flag: this key ends an interval.
pub const ELEM_INTERVAL_END: u32 = 0x1;

/// An attribute payload writer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attrs {
    buf: Vec<u8>,
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl Attrs {
    /// Raw bytes.
    pub fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).expect("attribute under 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(pad4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.bytes(ty, &v)
    }

    /// A big-endian u32.
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A big-endian i32 (priorities, verdict codes).
    pub fn i32(&mut self, ty: u16, v: i32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A big-endian u64.
    pub fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// Already encoded attributes, appended as they are.
    pub fn bytes_raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(encoded);
        self
    }

    /// A nested attribute.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::default();
        f(&mut inner);
        self.bytes(ty | NLA_F_NESTED, &inner.buf)
    }

    /// The encoded attributes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
}

/// One netfilter netlink message (outside a batch): `nlmsghdr`, `nfgenmsg`
/// (with `res_id` big-endian) and attributes.
pub fn message(ty: u16, flags: u16, fam: u8, res_id: u16, seq: u32, attrs: &Attrs) -> Vec<u8> {
    let len = u32::try_from(20 + attrs.as_slice().len()).expect("message under 4 GiB");
    let mut buf = Vec::with_capacity(len as usize);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(fam);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(attrs.as_slice());
    buf
}

/// A batch of nf_tables messages, applied by the kernel as one transaction.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    first: u32,
    /// What each message (by sequence number) does, for error reports.
    pub what: Vec<(u32, String)>,
}

impl Batch {
    /// A batch whose messages are numbered from `seq`.
    pub fn new(seq: u32) -> Self {
        let mut b = Self {
            buf: Vec::new(),
            seq,
            first: seq,
            what: Vec::new(),
        };
        b.header(
            BATCH_BEGIN,
            NLM_F_REQUEST,
            family::UNSPEC,
            SUBSYS,
            &Attrs::default(),
        );
        b
    }

    fn header(&mut self, ty: u16, flags: u16, fam: u8, res_id: u16, attrs: &Attrs) {
        let len = u32::try_from(16 + 4 + attrs.as_slice().len()).expect("message under 4 GiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        self.buf.push(fam);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(attrs.as_slice());
        self.seq = self.seq.wrapping_add(1);
    }

    /// Adds one nf_tables message (acknowledged, so that errors name it).
    pub fn add(&mut self, ty: u16, flags: u16, fam: u8, attrs: &Attrs, what: impl Into<String>) {
        self.what.push((self.seq, what.into()));
        self.header(
            (SUBSYS << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            fam,
            0,
            attrs,
        );
    }

    /// Ends the batch; returns the bytes and the sequence numbers used.
    pub fn finish(mut self) -> (Vec<u8>, std::ops::Range<u32>, Vec<(u32, String)>) {
        self.header(
            BATCH_END,
            NLM_F_REQUEST,
            family::UNSPEC,
            SUBSYS,
            &Attrs::default(),
        );
        (self.buf, self.first..self.seq, self.what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::default();
        a.str(attr::TABLE_NAME, "ab").nest(attr::CHAIN_HOOK, |h| {
            h.u32(attr::HOOK_HOOKNUM, 3);
        });
        assert_eq!(
            a.as_slice(),
            [
                7, 0, 1, 0, b'a', b'b', 0, 0, // len 7 (4 + "ab\0"), padded to 8
                12, 0, 4, 0x80, // nested CHAIN_HOOK, len 12
                8, 0, 1, 0, 0, 0, 0, 3, // HOOKNUM = 3, big-endian
            ]
        );
    }

    #[test]
    fn batch_framing() {
        let mut b = Batch::new(100);
        let mut a = Attrs::default();
        a.str(attr::TABLE_NAME, "t");
        b.add(msg::NEWTABLE, NLM_F_CREATE, family::INET, &a, "table");
        let (bytes, seqs, what) = b.finish();
        assert_eq!(seqs, 100..103);
        assert_eq!(what, vec![(101, "table".to_string())]);
        // BATCH_BEGIN: len 20, type 0x10, flags REQUEST, seq 100, res_id = htons(10).
        assert_eq!(
            &bytes[..20],
            &[20, 0, 0, 0, 0x10, 0, 1, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
        // NEWTABLE: type 0x0a00, flags REQUEST|ACK|CREATE, family inet.
        assert_eq!(
            &bytes[20..40],
            &[28, 0, 0, 0, 0, 0x0a, 0x05, 0x04, 101, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(&bytes[40..48], &[6, 0, 1, 0, b't', 0, 0, 0]);
        // BATCH_END.
        assert_eq!(
            &bytes[48..],
            &[20, 0, 0, 0, 0x11, 0, 1, 0, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
    }
}
