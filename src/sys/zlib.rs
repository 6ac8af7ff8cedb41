//! A safe wrapper over zlib's `inflate` for the gzip seek index (`crate::archive`).
//!
//! flate2 cannot stop at deflate block boundaries nor restart a raw stream in the middle
//! of a byte, which a seek index needs: `Z_BLOCK`, `inflatePrime` and
//! `inflateSetDictionary` are what zlib's own `examples/zran.c` uses, and they are only
//! reachable through the C API.

use std::ffi::CStr;
use std::fmt;
use std::os::raw::{c_int, c_uint, c_void};

use libz_sys as z;

/// What the compressed bytes are wrapped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    /// A gzip member: header, deflate data, CRC-32 and size trailer (checked by zlib).
    Gzip,
    /// Bare deflate data, as from a seek point in the middle of a member.
    Raw,
}

impl StreamFormat {
    fn window_bits(self) -> c_int {
        match self {
            StreamFormat::Gzip => 15 + 16,
            StreamFormat::Raw => -15,
        }
    }
}

/// An error zlib reported: its code and message.
#[derive(Clone, Debug)]
pub struct ZlibError {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for ZlibError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zlib error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ZlibError {}

/// The outcome of one [`Inflater::inflate`] call.
#[derive(Clone, Copy, Debug)]
pub struct InflateStep {
    pub consumed: usize,
    pub produced: usize,
    /// The deflate stream (or the gzip member, trailer included) is complete.
    pub stream_end: bool,
    /// zlib's `data_type` after the call (see [`InflateStep::at_block_boundary`]).
    data_type: c_int,
}

impl InflateStep {
    /// True when inflate stopped right after a deflate block (or a gzip header) and
    /// before the next one, which is not the last: a place a seek point can restart at.
    pub fn at_block_boundary(&self) -> bool {
        self.data_type & 128 != 0 && self.data_type & 64 == 0
    }

    /// How many bits of the last consumed byte belong to the next block (0..=7).
    pub fn unused_bits(&self) -> u8 {
        (self.data_type & 7) as u8
    }
}

unsafe extern "C" fn zalloc(_opaque: *mut c_void, items: c_uint, size: c_uint) -> *mut c_void {
    // SAFETY: calloc checks the multiplication for overflow and returns NULL on failure,
    // which zlib handles as Z_MEM_ERROR.
    unsafe { libc::calloc(items as usize, size as usize) }
}

unsafe extern "C" fn zfree(_opaque: *mut c_void, address: *mut c_void) {
    // SAFETY: `address` was returned by `zalloc` (calloc) and is freed once, by zlib.
    unsafe { libc::free(address) }
}

/// One zlib inflate stream. The stream state lives in a `Box` because zlib keeps a
/// pointer back to it: it must never move.
pub struct Inflater {
    stream: Box<z::z_stream>,
}

// SAFETY: a z_stream has no thread affinity; `Inflater` is only ever used through
// `&mut self`, so it is never touched from two threads at once.
unsafe impl Send for Inflater {}

impl fmt::Debug for Inflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

fn check(stream: &z::z_stream, code: c_int) -> Result<c_int, ZlibError> {
    if code >= 0 || code == z::Z_BUF_ERROR {
        return Ok(code);
    }
    let message = if stream.msg.is_null() {
        match code {
            z::Z_MEM_ERROR => "out of memory".to_string(),
            z::Z_STREAM_ERROR => "bad stream state".to_string(),
            z::Z_VERSION_ERROR => "incompatible zlib version".to_string(),
            _ => "invalid compressed data".to_string(),
        }
    } else {
        // SAFETY: zlib sets `msg` to a static NUL-terminated string or leaves it NULL.
        unsafe { CStr::from_ptr(stream.msg) }
            .to_string_lossy()
            .into_owned()
    };
    Err(ZlibError { code, message })
}

impl Inflater {
    pub fn new(format: StreamFormat) -> Result<Self, ZlibError> {
        let mut stream = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: `stream` is a fully initialised z_stream at a stable heap address; the
        // version string and struct size are the ones this binding was built against.
        let code = unsafe {
            z::inflateInit2_(
                &mut *stream,
                format.window_bits(),
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if code != z::Z_OK {
            // On failure zlib frees what it allocated; there is nothing to end.
            return Err(ZlibError {
                code,
                message: "inflateInit2 failed".into(),
            });
        }
        Ok(Inflater { stream })
    }

    /// Starts over with a fresh stream of `format` (keeps the allocations).
    pub fn reset(&mut self, format: StreamFormat) -> Result<(), ZlibError> {
        // SAFETY: the stream was initialised by inflateInit2 and is still live.
        let code = unsafe { z::inflateReset2(&mut *self.stream, format.window_bits()) };
        check(&self.stream, code).map(drop)
    }

    /// Feeds the low `bits` bits of `value` before the next input byte (a seek point
    /// that starts in the middle of a byte).
    pub fn prime(&mut self, bits: u8, value: u8) -> Result<(), ZlibError> {
        if bits == 0 {
            return Ok(());
        }
        // SAFETY: live stream; zlib checks `bits` (at most 16) itself.
        let code =
            unsafe { z::inflatePrime(&mut *self.stream, c_int::from(bits), c_int::from(value)) };
        check(&self.stream, code).map(drop)
    }

    /// Sets the 32 KiB of output that came before a seek point (raw streams only).
    pub fn set_dictionary(&mut self, window: &[u8]) -> Result<(), ZlibError> {
        if window.is_empty() {
            return Ok(());
        }
        let len = c_uint::try_from(window.len()).unwrap_or(c_uint::MAX);
        // SAFETY: live stream; zlib copies at most `len` bytes from `window`, which is
        // valid for that length.
        let code = unsafe { z::inflateSetDictionary(&mut *self.stream, window.as_ptr(), len) };
        check(&self.stream, code).map(drop)
    }

    /// Inflates from `input` into `output`. With `stop_at_block`, returns at the end of
    /// every deflate block (zlib's `Z_BLOCK`) so that the caller can place seek points.
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        stop_at_block: bool,
    ) -> Result<InflateStep, ZlibError> {
        let avail_in = c_uint::try_from(input.len()).unwrap_or(c_uint::MAX);
        let avail_out = c_uint::try_from(output.len()).unwrap_or(c_uint::MAX);
        let stream = &mut *self.stream;
        // zlib never writes through next_in (it is `z_const` in zlib.h).
        stream.next_in = input.as_ptr() as *mut u8;
        stream.avail_in = avail_in;
        stream.next_out = output.as_mut_ptr();
        stream.avail_out = avail_out;
        let flush = if stop_at_block {
            z::Z_BLOCK
        } else {
            z::Z_NO_FLUSH
        };
        // SAFETY: live stream; next_in/next_out point into slices valid for avail_in and
        // avail_out bytes for the duration of the call.
        let code = unsafe { z::inflate(stream, flush) };
        let consumed = (avail_in - stream.avail_in) as usize;
        let produced = (avail_out - stream.avail_out) as usize;
        // Do not leave pointers to the caller's buffers behind.
        stream.next_in = std::ptr::null_mut();
        stream.avail_in = 0;
        stream.next_out = std::ptr::null_mut();
        stream.avail_out = 0;
        let code = check(stream, code)?;
        if code == z::Z_NEED_DICT {
            return Err(ZlibError {
                code,
                message: "stream needs a preset dictionary".into(),
            });
        }
        Ok(InflateStep {
            consumed,
            produced,
            stream_end: code == z::Z_STREAM_END,
            data_type: stream.data_type,
        })
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by inflateInit2 and is ended exactly once.
        unsafe { z::inflateEnd(&mut *self.stream) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn inflates_gzip_and_reports_corruption() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&b"hello zlib ".repeat(1000)).unwrap();
        let gz = enc.finish().unwrap();
        let mut inf = Inflater::new(StreamFormat::Gzip).unwrap();
        let mut out = vec![0u8; 20000];
        let step = inf.inflate(&gz, &mut out, false).unwrap();
        assert!(step.stream_end);
        assert_eq!(step.produced, 11000);
        assert_eq!(&out[..11], b"hello zlib ");

        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 6] ^= 0xff; // the CRC-32 trailer
        inf.reset(StreamFormat::Gzip).unwrap();
        let err = inf.inflate(&bad, &mut out, false).unwrap_err();
        assert!(err.message.contains("check"), "{err}");
    }
}
