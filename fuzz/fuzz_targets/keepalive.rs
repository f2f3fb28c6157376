//! A control channel's timers (relay_core::keepalive), driven by random sequences of signs
//! of life, renewals and the passing of time. Checked: no panic; expiry is final and wins
//! over a ping; a ping is never due before its deadline; a listener heard within two
//! intervals is never dropped as silent.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_core::keepalive::{ChannelTimers, Due};

fuzz_target!(|data: &[u8]| {
    let Some((&setup, events)) = data.split_first() else {
        return;
    };
    let t0 = Instant::now();
    let interval = Duration::from_millis(u64::from(setup % 16 + 1) * 100);
    let grace = Duration::from_millis(u64::from(setup / 16) * 250);
    let mut timers = ChannelTimers::new(t0, interval, grace, Duration::from_secs(3));
    let (mut now, mut heard, mut expired) = (t0, t0, false);
    for pair in events.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let step = Duration::from_millis(u64::from(arg) * 10);
        match op % 3 {
            0 => {
                heard = now;
                timers.heard(now);
            }
            1 => {
                if !expired {
                    timers.renewed(now, step * 10);
                }
            }
            _ => {
                let deadline = timers.deadline();
                now += step;
                match timers.on_time(now) {
                    Due::Nothing => assert!(now < deadline || expired, "something was due"),
                    Due::Ping => {
                        assert!(!expired && now >= deadline, "a ping only when due");
                        assert!(timers.deadline() > now);
                    }
                    Due::Silent => {
                        assert!(
                            now.duration_since(heard) > interval * 2,
                            "dropped while talking"
                        );
                        return;
                    }
                    Due::Expired => expired = true,
                }
            }
        }
        if expired {
            return;
        }
    }
});
