#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // mail-parser debug-asserts on some malformed MIME nestings (release builds skip the
        // part instead). Concierge's parser catches that panic and refuses the message
        // (src/channels/email/parse.rs), so here it is not a crash; libFuzzer's own hook, which
        // aborts, still sees every other panic.
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_mail_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-"));
            if !in_mail_parser {
                abort(info)
            }
        }));
    },
    |data: &[u8]| concierge::fuzzing::email(data)
);
