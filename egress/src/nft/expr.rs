//! nf_tables rule expressions (`payload`, `meta`, `cmp`, `lookup`,
//! `dynset`, `ct`, `bitwise`, `immediate`, ...), each encoded as one
//! `NFTA_LIST_ELEM`.

use super::wire::{attr, Attrs};

/// `NFT_REG_1`, the register loads and comparisons use.
const REG1: u32 = 1;
/// `NFT_REG_VERDICT`.
const REG_VERDICT: u32 = 0;

/// Payload bases.
#[derive(Debug, Clone, Copy)]
pub enum Base {
    /// `NFT_PAYLOAD_NETWORK_HEADER`.
    Network = 1,
    /// `NFT_PAYLOAD_TRANSPORT_HEADER`.
    Transport = 2,
}

/// Meta keys.
#[derive(Debug, Clone, Copy)]
pub enum MetaKey {
    /// `NFT_META_OIFNAME`.
    OifName = 7,
    /// `NFT_META_SKUID`.
    SkUid = 10,
    /// `NFT_META_NFPROTO`.
    NfProto = 15,
    /// `NFT_META_L4PROTO`.
    L4Proto = 16,
}

/// Verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `NF_DROP`.
    Drop = 0,
    /// `NF_ACCEPT`.
    Accept = 1,
}

/// A rule's expression list being built.
#[derive(Debug, Default)]
pub struct Exprs {
    attrs: Attrs,
}

impl Exprs {
    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        self.attrs.nest(attr::LIST_ELEM, |e| {
            e.str(attr::EXPR_NAME, name).nest(attr::EXPR_DATA, f);
        });
        self
    }

    /// Loads `len` bytes at `offset` of a header into register 1.
    pub fn payload(&mut self, base: Base, offset: u32, len: u32) -> &mut Self {
        self.expr("payload", |d| {
            d.u32(1, REG1)
                .u32(2, base as u32)
                .u32(3, offset)
                .u32(4, len);
        })
    }

    /// Loads a meta key into register 1.
    pub fn meta(&mut self, key: MetaKey) -> &mut Self {
        self.expr("meta", |d| {
            d.u32(1, REG1).u32(2, key as u32);
        })
    }

    /// Register 1 must equal `data` (`NFT_CMP_EQ`) or differ (`NFT_CMP_NEQ`).
    pub fn cmp(&mut self, equal: bool, data: &[u8]) -> &mut Self {
        self.expr("cmp", |d| {
            d.u32(1, REG1).u32(2, u32::from(!equal)).nest(3, |v| {
                v.bytes(attr::DATA_VALUE, data);
            });
        })
    }

    /// Register 1 must be in the named set.
    pub fn lookup(&mut self, set: &str) -> &mut Self {
        self.expr("lookup", |d| {
            d.str(1, set).u32(2, REG1);
        })
    }

    /// `ct state` masked by `bits` must be non-zero.
    pub fn ct_state_any(&mut self, bits: u32) -> &mut Self {
        self.expr("ct", |d| {
            d.u32(1, REG1).u32(2, 0); // NFT_CT_STATE
        });
        self.expr("bitwise", |d| {
            d.u32(1, REG1).u32(2, REG1).u32(3, 4);
            d.nest(4, |m| {
                m.bytes(attr::DATA_VALUE, &bits.to_ne_bytes());
            });
            d.nest(5, |x| {
                x.bytes(attr::DATA_VALUE, &0u32.to_ne_bytes());
            });
        });
        self.cmp(false, &0u32.to_ne_bytes())
    }

    /// Loads the cgroup v2 id of the packet's socket at `level` into register 1.
    pub fn socket_cgroup(&mut self, level: u32) -> &mut Self {
        self.expr("socket", |d| {
            d.u32(1, 3).u32(2, REG1).u32(3, level); // NFT_SOCKET_CGROUPV2
        })
    }

    /// Loads the mark of the packet's socket into register 1 (found for
    /// incoming packets too, unlike the packet mark).
    pub fn socket_mark(&mut self) -> &mut Self {
        self.expr("socket", |d| {
            d.u32(1, 1).u32(2, REG1); // NFT_SOCKET_MARK
        })
    }

    /// Loads `data` into register 1.
    pub fn load(&mut self, data: &[u8]) -> &mut Self {
        self.expr("immediate", |d| {
            d.u32(1, REG1).nest(2, |v| {
                v.bytes(attr::DATA_VALUE, data);
            });
        })
    }

    /// Adds the key in register 1 to the named set, or refreshes its
    /// timeout when it is there (`NFT_DYNSET_OP_UPDATE`; the set needs the
    /// timeout and eval flags).
    pub fn set_update(&mut self, set: &str) -> &mut Self {
        self.expr("dynset", |d| {
            d.str(1, set).u32(3, 1).u32(4, REG1); // NFTA_DYNSET_SET_NAME, _OP, _SREG_KEY
        })
    }

    /// Redirects to the local port held in register 1 (a terminal statement).
    pub fn redirect(&mut self) -> &mut Self {
        self.expr("redir", |d| {
            d.u32(1, REG1).u32(2, REG1); // proto min and max
        })
    }

    /// Puts the packet's connection in conntrack zone `zone`.
    pub fn ct_zone(&mut self, zone: u16) -> &mut Self {
        self.load(&zone.to_ne_bytes());
        self.expr("ct", |d| {
            d.u32(2, 17).u32(4, REG1); // NFTA_CT_KEY = NFT_CT_ZONE, NFTA_CT_SREG
        })
    }

    /// `NFT_RETURN`: leave this chain.
    pub fn ret(&mut self) -> &mut Self {
        self.expr("immediate", |d| {
            d.u32(1, REG_VERDICT).nest(2, |data| {
                data.nest(attr::DATA_VERDICT, |vd| {
                    vd.i32(attr::VERDICT_CODE, -5);
                });
            });
        })
    }

    /// Sends the packet's headers to nflog `group` with `prefix`.
    pub fn log(&mut self, group: u16, prefix: &str) -> &mut Self {
        self.expr("log", |d| {
            d.bytes(1, &group.to_be_bytes()).str(2, prefix).u32(3, 64); // group, prefix, snaplen
        })
    }

    /// Ends the rule with a verdict.
    pub fn verdict(&mut self, v: Verdict) -> &mut Self {
        self.expr("immediate", |d| {
            d.u32(1, REG_VERDICT).nest(2, |data| {
                data.nest(attr::DATA_VERDICT, |vd| {
                    vd.i32(attr::VERDICT_CODE, v as i32);
                });
            });
        })
    }

    /// The encoded list.
    pub fn attrs(&self) -> &Attrs {
        &self.attrs
    }
}
