//! libfuzzer-sys aborts on every panic, before anything can catch it. `ChatTemplate::render`
//! deliberately catches minijinja's own panics (bugs of the renderer that a template can
//! trigger) and returns them as errors, so for these targets a panic raised inside minijinja
//! is let through to that boundary; any other panic still aborts as a crash, and one of
//! minijinja's that escapes the boundary reaches libfuzzer-sys's own check and aborts too.
use std::sync::Once;

pub fn let_render_catch_minijinja_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_minijinja = info
                .location()
                .is_some_and(|l| l.file().contains("/minijinja-"));
            if !in_minijinja {
                abort(info);
            }
        }));
    });
}
