//! nftables commands run inside the agent, through the library the `nft`
//! tool is built on (`libnftables.so.1`), when the host has it.
//!
//! Why: every isolation and heal ran `nft`, and starting it is most of
//! their cost: 90–130 ms a run in an emulated guest (a heal is two runs),
//! a few ms on a real host. The library takes the same scripts and prints
//! the same words (it is what `nft` calls), over one context kept while
//! commands come (a run's cases) and unloaded 10 s after the last, its
//! memory given back. It is loaded at run time, never linked: a host
//! without nftables still runs the agent, and the callers fall back to
//! `nft`.

#![allow(unsafe_code)]

use libloading::Library;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `NFT_CTX_OUTPUT_JSON` of `libnftables.h`: what `nft -j` sets.
const OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(flags: u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(ctx: *mut c_void);
type CtxBuffer = unsafe extern "C" fn(ctx: *mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(ctx: *mut c_void) -> *const c_char;
type CtxSetFlags = unsafe extern "C" fn(ctx: *mut c_void, flags: c_uint);
type RunCmd = unsafe extern "C" fn(ctx: *mut c_void, buf: *const c_char) -> c_int;

/// One libnftables context and the library it came from.
struct Context {
    ctx: *mut c_void,
    free: CtxFree,
    output: CtxGetBuffer,
    error: CtxGetBuffer,
    set_flags: CtxSetFlags,
    run: RunCmd,
    // Last: dropped after `ctx` was freed (see `Drop`).
    _library: Library,
}

// SAFETY: the context is only ever used under the `Mutex` of `LOADED`, by
// one thread at a time; libnftables keeps no thread-local state.
unsafe impl Send for Context {}

/// The function `name` of `library`, as a `T`.
///
/// # Safety
/// `T` is the function type that `libnftables.h` declares for `name`.
unsafe fn symbol<T: Copy>(library: &Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: as the caller promised.
    unsafe { library.get::<T>(name) }
        .map(|found| *found)
        .map_err(|error| error.to_string())
}

impl Context {
    fn open() -> Result<Self, String> {
        // SAFETY: loading libnftables runs its initialisers, which only set
        // up its own tables (no global state of ours is touched).
        let library =
            unsafe { Library::new("libnftables.so.1") }.map_err(|error| error.to_string())?;
        // SAFETY: each symbol is looked up with the signature that
        // `libnftables.h` (nftables 0.9 and later) declares for it.
        let (new, buffer_output, buffer_error) = unsafe {
            (
                symbol::<CtxNew>(&library, b"nft_ctx_new\0")?,
                symbol::<CtxBuffer>(&library, b"nft_ctx_buffer_output\0")?,
                symbol::<CtxBuffer>(&library, b"nft_ctx_buffer_error\0")?,
            )
        };
        // SAFETY: as above.
        let (free, output, error, set_flags, run) = unsafe {
            (
                symbol::<CtxFree>(&library, b"nft_ctx_free\0")?,
                symbol::<CtxGetBuffer>(&library, b"nft_ctx_get_output_buffer\0")?,
                symbol::<CtxGetBuffer>(&library, b"nft_ctx_get_error_buffer\0")?,
                symbol::<CtxSetFlags>(&library, b"nft_ctx_output_set_flags\0")?,
                symbol::<RunCmd>(&library, b"nft_run_cmd_from_buffer\0")?,
            )
        };
        // SAFETY: NFT_CTX_DEFAULT (0), the `nft` tool's own flags; the
        // context is freed by `Drop` once it is ours.
        let ctx = unsafe { new(0) };
        if ctx.is_null() {
            return Err("nft_ctx_new failed".to_owned());
        }
        let context = Self {
            ctx,
            free,
            output,
            error,
            set_flags,
            run,
            _library: library,
        };
        // SAFETY: `ctx` is live (owned by `context`).
        let buffered = unsafe { buffer_output(ctx) == 0 && buffer_error(ctx) == 0 };
        if !buffered {
            return Err("libnftables cannot buffer its output".to_owned());
        }
        Ok(context)
    }

    /// Run `commands` (what `nft -f -` reads); what it printed, or what it
    /// said went wrong.
    fn run(&mut self, commands: &str, json: bool) -> Result<String, String> {
        let commands = CString::new(commands).map_err(|_| "a command holds a NUL".to_owned())?;
        // SAFETY: `ctx` is live until `Drop`; the buffers it returns are
        // NUL-terminated and stay valid until its next command, so they are
        // copied out at once.
        unsafe {
            (self.set_flags)(self.ctx, if json { OUTPUT_JSON } else { 0 });
            let failed = (self.run)(self.ctx, commands.as_ptr()) != 0;
            let output = Self::text((self.output)(self.ctx));
            let error = Self::text((self.error)(self.ctx));
            if failed { Err(error) } else { Ok(output) }
        }
    }

    /// # Safety
    /// `text` is null or NUL-terminated and valid.
    unsafe fn text(text: *const c_char) -> String {
        if text.is_null() {
            return String::new();
        }
        // SAFETY: as the caller promised.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from `nft_ctx_new` and is freed once, before
        // the library is unloaded (fields drop after this).
        unsafe { (self.free)(self.ctx) }
    }
}

/// How long the library stays loaded after its last command: through a
/// run's cases, not while the agent idles (it costs 3 MB of memory).
const LINGER: Duration = Duration::from_secs(10);

/// The agent's one context while in use, and when it was last used.
struct Loaded {
    context: Context,
    used: Instant,
}

/// Whether this host has the library, found out at its first load
/// (`FAULTLAB_NFT=exec` says to run the `nft` tool instead).
static AVAILABLE: OnceLock<bool> = OnceLock::new();

/// The context, loaded at first use and unloaded [`LINGER`] after the last.
static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// Run `commands` through libnftables, `json` as `nft -j` does: `None`
/// when the library is not in use (run the `nft` tool instead).
pub fn run(commands: &str, json: bool) -> Option<Result<String, String>> {
    if AVAILABLE.get() == Some(&false) {
        return None;
    }
    if std::env::var_os("FAULTLAB_NFT").is_some_and(|how| how == "exec") {
        let _ = AVAILABLE.set(false);
        return None;
    }
    let mut loaded = lock(&LOADED);
    if loaded.is_none() {
        match Context::open() {
            Ok(context) => {
                if AVAILABLE.set(true).is_ok() {
                    tracing::info!("nftables commands run in process (libnftables)");
                }
                *loaded = Some(Loaded {
                    context,
                    used: Instant::now(),
                });
                // Without that thread the library just stays loaded.
                let _ = std::thread::Builder::new()
                    .name("nft-unload".to_owned())
                    .spawn(unload_when_idle);
            }
            Err(why) => {
                if AVAILABLE.set(false).is_ok() {
                    tracing::info!(%why, "libnftables not loaded: nftables commands run the nft tool");
                } else {
                    tracing::warn!(%why, "libnftables did not load again: this command runs the nft tool");
                }
                return None;
            }
        }
    }
    let in_use = loaded.as_mut()?;
    in_use.used = Instant::now();
    Some(in_use.context.run(commands, json))
}

/// Unload the context once it has not been used for [`LINGER`].
fn unload_when_idle() {
    loop {
        let idle_until = {
            let mut loaded = lock(&LOADED);
            let Some(in_use) = loaded.as_ref() else {
                return;
            };
            let until = in_use.used + LINGER;
            if Instant::now() >= until {
                *loaded = None;
                drop(loaded);
                // What its context allocated goes back to the system too.
                <super::Current as super::Platform>::return_free_memory();
                return;
            }
            until
        };
        std::thread::sleep(idle_until.saturating_duration_since(Instant::now()));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
