//! Zstd decompression over `ruzstd`, frame after frame.

use std::io::{self, BufRead, Read};

/// A zstd stream of one or more frames (`zstd -T0` writes several).
pub(crate) struct ZstdFrames<R: BufRead> {
    input: Option<R>,
    frame: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    pub(crate) fn new(input: R) -> Self {
        Self {
            input: Some(input),
            frame: None,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(frame) = self.frame.as_mut() {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.input = self.frame.take().map(|f| f.into_inner());
            }
            let Some(mut input) = self.input.take() else {
                return Ok(0);
            };
            if input.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let frame = ruzstd::decoding::StreamingDecoder::new(input).map_err(io::Error::other)?;
            self.frame = Some(frame);
        }
    }
}
