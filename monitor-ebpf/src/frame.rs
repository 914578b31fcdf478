//! What the classifier needs from a packet, for both attach points: the directly readable
//! bytes, the full length, and a bounded copy of payload bytes.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

pub trait Frame {
    /// The program context, for aya-log records.
    type Ctx: EbpfContext;
    fn ctx(&self) -> &Self::Ctx;
    /// First directly readable byte.
    fn start(&self) -> usize;
    /// One past the last directly readable byte.
    fn end(&self) -> usize;
    /// Length of the whole packet (an skb may hold more than its linear part).
    fn len(&self) -> usize;
    /// Copies `len` (1..=buf.len()) bytes at `offset` into `buf`. False if out of range.
    fn load_bytes(&self, offset: usize, buf: &mut [u8], len: usize) -> bool;
    /// Tries to make the first `len` bytes (or the whole packet, if shorter) directly readable;
    /// true if it changed anything.
    fn pull(&self, len: usize) -> bool;
}

pub struct XdpFrame<'a>(pub &'a XdpContext);
pub struct TcFrame<'a>(pub &'a TcContext);

impl Frame for XdpFrame<'_> {
    type Ctx = XdpContext;
    #[inline(always)]
    fn ctx(&self) -> &XdpContext {
        self.0
    }
    #[inline(always)]
    fn start(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.0.data_end()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }
    #[inline(always)]
    fn load_bytes(&self, offset: usize, buf: &mut [u8], len: usize) -> bool {
        if len == 0 || len > buf.len() {
            return false;
        }
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.0.as_ptr().cast(),
                offset as u32,
                buf.as_mut_ptr().cast(),
                len as u32,
            )
        };
        ret == 0
    }
    #[inline(always)]
    fn pull(&self, _len: usize) -> bool {
        false
    }
}

impl Frame for TcFrame<'_> {
    type Ctx = TcContext;
    #[inline(always)]
    fn ctx(&self) -> &TcContext {
        self.0
    }
    #[inline(always)]
    fn start(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.0.data_end()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }
    #[inline(always)]
    fn load_bytes(&self, offset: usize, buf: &mut [u8], len: usize) -> bool {
        if len == 0 || len > buf.len() {
            return false;
        }
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0.as_ptr().cast(),
                offset as u32,
                buf.as_mut_ptr().cast(),
                len as u32,
            )
        };
        ret == 0
    }
    #[inline(always)]
    fn pull(&self, len: usize) -> bool {
        // Asking for more than the packet holds fails, so a short non-linear skb asks for all.
        let whole = self.len();
        let want = if len < whole { len } else { whole };
        let linear = self.end() - self.start();
        linear < want && self.0.pull_data(want as u32).is_ok()
    }
}
