//! A byte-stream wrapper that can remove outgoing pong frames.
//!
//! tungstenite queues a pong for every ping it reads and writes it with the next read, write
//! or flush; there is no switch to turn that off. To play a server that never answers pings,
//! the server's WebSocket runs over this wrapper, which parses the outgoing frame headers
//! (server frames are unmasked, but masks are handled too) and swallows whole pong frames while
//! the `no_pongs` fault is on. Everything else passes through untouched, in as few writes as
//! the inner stream accepts.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::counters::Counters;
use super::faults::Faults;

const OPCODE_PONG: u8 = 0xA;

/// Where the outgoing byte stream is, frame-wise.
#[derive(Debug, Clone, Copy, Default)]
struct Parser {
    /// Bytes of the current header seen so far (0: at a frame boundary).
    hdr_len: usize,
    /// Header length, known after its second byte (0 until then).
    hdr_need: usize,
    /// The header bytes that carry the payload length (bytes 2..).
    len_buf: [u8; 8],
    /// Payload length from byte 1.
    len7: u8,
    /// Payload bytes left in the current frame.
    payload_left: u64,
    /// Whether the current frame is being swallowed.
    drop: bool,
}

impl Parser {
    fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.payload_left == 0
    }

    /// How many bytes of `buf` (from the start) share the current frame's keep/drop decision,
    /// stopping at the first frame boundary where that decision would change. The decision for a
    /// frame starting at a boundary is made with `drop_pongs`. Does not change `self`.
    fn run(&self, buf: &[u8], drop_pongs: bool) -> (usize, bool) {
        let mut p = *self;
        let mut i = 0;
        let mut decision = None;
        while i < buf.len() {
            if p.at_boundary() {
                let d = drop_pongs && buf[i] & 0x0F == OPCODE_PONG;
                if decision.is_some_and(|prev| prev != d) {
                    break;
                }
            }
            i += p.advance(&buf[i..], drop_pongs);
            decision.get_or_insert(p.drop);
        }
        (i, decision.unwrap_or(false))
    }

    /// Consumes up to the end of the current frame (or of `buf`); returns the bytes consumed.
    fn advance(&mut self, buf: &[u8], drop_pongs: bool) -> usize {
        if self.at_boundary() {
            if let Some(b) = buf.first() {
                self.drop = drop_pongs && b & 0x0F == OPCODE_PONG;
            }
        }
        if self.payload_left > 0 {
            let n = (buf.len() as u64).min(self.payload_left) as usize;
            self.payload_left -= n as u64;
            return n;
        }
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            i += 1;
            match self.hdr_len {
                0 => {}
                1 => {
                    self.len7 = b & 0x7F;
                    let ext = match self.len7 {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let mask = if b & 0x80 != 0 { 4 } else { 0 };
                    self.hdr_need = 2 + ext + mask;
                }
                n => {
                    if n - 2 < 8 {
                        self.len_buf[n - 2] = b;
                    }
                }
            }
            self.hdr_len += 1;
            if self.hdr_len >= 2 && self.hdr_len == self.hdr_need {
                let len = match self.len7 {
                    126 => u16::from_be_bytes([self.len_buf[0], self.len_buf[1]]) as u64,
                    127 => u64::from_be_bytes(self.len_buf),
                    n => n as u64,
                };
                self.hdr_len = 0;
                self.hdr_need = 0;
                self.payload_left = len;
                if len == 0 {
                    return i;
                }
                let n = ((buf.len() - i) as u64).min(len) as usize;
                self.payload_left -= n as u64;
                return i + n;
            }
        }
        i
    }

    /// Advances over all of `buf`; returns how many dropped frames started in it.
    fn consume(&mut self, buf: &[u8], drop_pongs: bool) -> u64 {
        let mut i = 0;
        let mut dropped = 0;
        while i < buf.len() {
            let starts = self.at_boundary();
            i += self.advance(&buf[i..], drop_pongs);
            if starts && self.drop {
                dropped += 1;
            }
        }
        dropped
    }
}

/// The stream a server WebSocket runs over: `S` with pong frames filtered out of the writes
/// while [`Faults::no_pongs`] is on.
#[derive(Debug)]
pub(crate) struct PongFilter<S> {
    inner: S,
    parser: Parser,
    /// Off during the HTTP upgrade, whose bytes are not frames.
    active: bool,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
}

impl<S> PongFilter<S> {
    pub(crate) fn new(inner: S, faults: Arc<Faults>, counters: Arc<Counters>) -> Self {
        Self {
            inner,
            parser: Parser::default(),
            active: false,
            faults,
            counters,
        }
    }

    /// The wrapped stream.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Starts parsing frames: call once the upgrade response has been written.
    pub(crate) fn activate(&mut self) {
        self.active = true;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PongFilter<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PongFilter<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.active {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let drop_pongs = this.faults.no_pongs();
        let mut done = 0;
        while done < buf.len() {
            let rest = &buf[done..];
            let (run, drop) = this.parser.run(rest, drop_pongs);
            if drop {
                let n = this.parser.consume(&rest[..run], drop_pongs);
                this.counters.pongs_suppressed.fetch_add(n, Relaxed);
                done += run;
                continue;
            }
            return match Pin::new(&mut this.inner).poll_write(cx, &rest[..run]) {
                Poll::Ready(Ok(n)) => {
                    this.parser.consume(&rest[..n], drop_pongs);
                    Poll::Ready(Ok(done + n))
                }
                Poll::Ready(Err(e)) if done == 0 => Poll::Ready(Err(e)),
                Poll::Pending if done == 0 => Poll::Pending,
                // Some bytes were swallowed already: report them; the error or the blocking
                // comes back on the next call.
                _ => Poll::Ready(Ok(done)),
            };
        }
        Poll::Ready(Ok(done))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0x80 | opcode];
        if len < 126 {
            v.push(len as u8);
        } else if len <= u16::MAX as usize {
            v.push(126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend(std::iter::repeat_n(opcode, len));
        v
    }

    /// Feeds `input` in chunks of `chunk` bytes and returns what would reach the socket.
    fn filter(input: &[u8], chunk: usize, drop_pongs: bool) -> Vec<u8> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            let mut i = 0;
            while i < c.len() {
                let (run, drop) = p.run(&c[i..], drop_pongs);
                assert!(run > 0);
                if !drop {
                    out.extend_from_slice(&c[i..i + run]);
                }
                p.consume(&c[i..i + run], drop_pongs);
                i += run;
            }
        }
        out
    }

    #[test]
    fn swallows_only_pongs_across_any_chunking() {
        let text = frame(0x1, 5);
        let pong = frame(OPCODE_PONG, 3);
        let big = frame(0x1, 300);
        let huge = frame(0x2, 70_000);
        let empty_pong = frame(OPCODE_PONG, 0);
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (f, keep) in [
            (&text, true),
            (&pong, false),
            (&big, true),
            (&empty_pong, false),
            (&huge, true),
            (&pong, false),
            (&text, true),
        ] {
            input.extend_from_slice(f);
            if keep {
                expected.extend_from_slice(f);
            }
        }
        for chunk in [1, 2, 3, 7, 64, 1000, input.len()] {
            assert_eq!(filter(&input, chunk, true), expected, "chunk {chunk}");
            assert_eq!(filter(&input, chunk, false), input, "chunk {chunk}");
        }
    }
}
