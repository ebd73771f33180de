//! The thrash guard: a plugin and another writer rewriting the same object back and forth
//! are detected, and the plugin is slowed down.
//!
//! A write is *contested* when the plugin asked for exactly what it asked for last time
//! (same [digest](crate::write::Written::digest)) and yet the write changed the object (a
//! new resourceVersion): someone else must have changed those fields in between. Edits
//! of fields the plugin does not own, and a plugin changing its mind, are not contested.
//!
//! `threshold` contested writes of one object within `window` mean a fight: the primary
//! whose reconcile wrote it is held — not reconciled — for `hold`, doubling with every
//! fight after that (up to `max_hold`), and the caller records a Warning Event naming
//! the object. A hold ends by itself; four quiet windows reset the doubling.

use crate::contract::{Gvk, ObjectKey};
use crate::write::Written;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When contested writes count as a fight, and how long the plugin is slowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrashConfig {
    /// Contested writes of one object within `window` that make a fight.
    pub threshold: usize,
    /// The window.
    pub window: Duration,
    /// How long the primary is held after its first fight.
    pub hold: Duration,
    /// The longest hold.
    pub max_hold: Duration,
}

impl Default for ThrashConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            window: Duration::from_secs(60),
            hold: Duration::from_secs(30),
            max_hold: Duration::from_secs(600),
        }
    }
}

/// A fight detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fight {
    /// The contested object: `Kind namespace/name`.
    pub object: String,
    /// Contested writes within the window.
    pub rounds: usize,
    /// How long the primary is held.
    pub hold: Duration,
}

#[derive(Default)]
struct Track {
    digest: u64,
    seen: Option<Instant>,
    contested: VecDeque<Instant>,
    fights: u32,
    last_fight: Option<Instant>,
}

type Key = (Gvk, Option<String>, String);

/// Per-plugin thrash detection.
pub struct ThrashGuard {
    config: ThrashConfig,
    tracks: Mutex<HashMap<Key, Track>>,
    holds: Mutex<HashMap<ObjectKey, Instant>>,
}

impl ThrashGuard {
    /// A guard with `config`.
    pub fn new(config: ThrashConfig) -> Self {
        Self {
            config,
            tracks: Mutex::default(),
            holds: Mutex::default(),
        }
    }

    /// Records a write made while reconciling `primary`; a fight when this write tips
    /// the object over the threshold (the primary is then held).
    pub fn observe(&self, primary: &ObjectKey, w: &Written, now: Instant) -> Option<Fight> {
        let Some(rv) = &w.resource_version else {
            return None; // a delete
        };
        let key = (w.kind.clone(), w.namespace.clone(), w.name.clone());
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        let track = tracks.entry(key).or_default();
        let contested =
            track.digest == w.digest && w.previous.as_ref().is_some_and(|prev| prev != rv);
        track.digest = w.digest;
        track.seen = Some(now);
        let window = self.config.window;
        track
            .contested
            .retain(|at| now.saturating_duration_since(*at) < window);
        if track
            .last_fight
            .is_some_and(|at| now.saturating_duration_since(at) > window * 4)
        {
            track.fights = 0;
        }
        if !contested {
            return None;
        }
        track.contested.push_back(now);
        if track.contested.len() < self.config.threshold {
            return None;
        }
        let rounds = track.contested.len();
        track.contested.clear();
        track.fights += 1;
        track.last_fight = Some(now);
        let factor = 1u32 << (track.fights - 1).min(16);
        let hold = self
            .config
            .hold
            .saturating_mul(factor)
            .min(self.config.max_hold);
        drop(tracks);
        self.holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(primary.clone(), now + hold);
        let ns = w
            .namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        Some(Fight {
            object: format!("{} {ns}{}", w.kind.kind, w.name),
            rounds,
            hold,
        })
    }

    /// How long `primary` is still held, if it is.
    pub fn held(&self, primary: &ObjectKey, now: Instant) -> Option<Duration> {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        match holds.get(primary) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                holds.remove(primary);
                None
            }
            None => None,
        }
    }

    /// Forgets objects quiet for longer than four windows (bounded memory).
    pub fn forget_quiet(&self, now: Instant) {
        let horizon = self.config.window * 4;
        self.tracks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, t| {
                t.seen
                    .is_some_and(|at| now.saturating_duration_since(at) < horizon)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> ObjectKey {
        ObjectKey {
            namespace: Some("a".into()),
            name: "src".into(),
        }
    }

    fn write(previous: &str, rv: &str, digest: u64) -> Written {
        Written {
            kind: Gvk::new("", "v1", "ConfigMap"),
            namespace: Some("a".into()),
            name: "src-mirror".into(),
            resource_version: Some(rv.into()),
            verb: "apply",
            uid: None,
            previous: Some(previous.into()),
            digest,
            managers: Vec::new(),
        }
    }

    fn config() -> ThrashConfig {
        ThrashConfig {
            threshold: 3,
            window: Duration::from_secs(60),
            hold: Duration::from_secs(10),
            max_hold: Duration::from_secs(25),
        }
    }

    #[test]
    fn the_same_intent_changing_the_object_again_and_again_is_a_fight() {
        let g = ThrashGuard::new(config());
        let t0 = Instant::now();
        // First write: nothing to compare with.
        assert_eq!(g.observe(&primary(), &write("1", "2", 7), t0), None);
        // Someone reverts (rv 3); the plugin writes the same again (3 → 4): contested.
        assert_eq!(g.observe(&primary(), &write("3", "4", 7), t0), None);
        assert_eq!(g.observe(&primary(), &write("5", "6", 7), t0), None);
        let fight = g
            .observe(&primary(), &write("7", "8", 7), t0 + Duration::from_secs(1))
            .expect("third contested write within the window");
        assert_eq!(fight.rounds, 3);
        assert_eq!(fight.object, "ConfigMap a/src-mirror");
        assert_eq!(fight.hold, Duration::from_secs(10));
        assert_eq!(
            g.held(&primary(), t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            g.held(&primary(), t0 + Duration::from_secs(12)),
            None,
            "holds end"
        );
        // The next fight holds twice as long, capped.
        for rv in [9, 11] {
            g.observe(
                &primary(),
                &write(&rv.to_string(), &(rv + 1).to_string(), 7),
                t0,
            );
        }
        let again = g
            .observe(
                &primary(),
                &write("13", "14", 7),
                t0 + Duration::from_secs(13),
            )
            .unwrap();
        assert_eq!(again.hold, Duration::from_secs(20));
        for rv in [15, 17] {
            g.observe(
                &primary(),
                &write(&rv.to_string(), &(rv + 1).to_string(), 7),
                t0,
            );
        }
        let third = g
            .observe(
                &primary(),
                &write("19", "20", 7),
                t0 + Duration::from_secs(34),
            )
            .unwrap();
        assert_eq!(third.hold, Duration::from_secs(25), "capped at max_hold");
    }

    #[test]
    fn the_defaults_make_five_contested_writes_a_fight_held_30s_doubling_to_10_min_and_quiet_windows_reset()
     {
        let defaults = ThrashConfig::default();
        assert_eq!(
            defaults,
            ThrashConfig {
                threshold: 5,
                window: Duration::from_secs(60),
                hold: Duration::from_secs(30),
                max_hold: Duration::from_secs(600),
            }
        );
        let g = ThrashGuard::new(defaults);
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut rv = 1u64;
        // The plugin writes the same again, and each time someone changed it meanwhile.
        let mut contest = |at: Instant| {
            let w = write(&rv.to_string(), &(rv + 1).to_string(), 7);
            rv += 2;
            g.observe(&primary(), &w, at)
        };
        assert_eq!(
            contest(t0),
            None,
            "the first write has nothing to compare with"
        );
        let mut at = t0;
        // Four contested writes in a minute are no fight; the fifth is. Back-to-back
        // fights double the hold up to ten minutes.
        for hold in [30, 60, 120, 240, 480, 600, 600] {
            for _ in 0..4 {
                at += secs(1);
                assert_eq!(contest(at), None);
            }
            at += secs(1);
            let fight = contest(at).expect("the fifth contested write within the window");
            assert_eq!((fight.rounds, fight.hold), (5, secs(hold)));
        }
        // Three quiet windows keep the doubling (capped); four reset it to the first hold.
        let fight_after =
            |quiet: Duration,
             at: &mut Instant,
             contest: &mut dyn FnMut(Instant) -> Option<Fight>| {
                *at += quiet;
                for _ in 0..4 {
                    assert_eq!(contest(*at), None);
                }
                contest(*at).expect("a fight").hold
            };
        assert_eq!(fight_after(secs(3 * 60), &mut at, &mut contest), secs(600));
        assert_eq!(
            fight_after(secs(4 * 60 + 1), &mut at, &mut contest),
            secs(30)
        );
        assert_eq!(fight_after(secs(1), &mut at, &mut contest), secs(60));
    }

    #[test]
    fn no_op_writes_new_intents_and_old_rounds_are_not_a_fight() {
        let g = ThrashGuard::new(config());
        let t0 = Instant::now();
        g.observe(&primary(), &write("1", "2", 7), t0);
        // A no-op apply (same rv back) is no contest.
        for _ in 0..5 {
            assert_eq!(g.observe(&primary(), &write("2", "2", 7), t0), None);
        }
        // The plugin changing its mind each time is no contest either.
        for (i, rv) in (3..8).enumerate() {
            let w = write(&rv.to_string(), &(rv + 1).to_string(), 100 + i as u64);
            assert_eq!(g.observe(&primary(), &w, t0), None);
        }
        // Contested writes further apart than the window never add up.
        let mut at = t0;
        for rv in (20..40).step_by(2) {
            at += Duration::from_secs(31);
            let w = write(&rv.to_string(), &(rv + 1).to_string(), 104);
            assert_eq!(g.observe(&primary(), &w, at), None);
        }
        assert_eq!(g.held(&primary(), at), None);
    }

    #[test]
    fn forgetting_keeps_recently_written_objects_only() {
        let g = ThrashGuard::new(config());
        let t0 = Instant::now();
        g.observe(&primary(), &write("1", "2", 7), t0);
        g.forget_quiet(t0 + Duration::from_secs(1));
        g.observe(&primary(), &write("3", "4", 7), t0 + Duration::from_secs(2));
        g.observe(&primary(), &write("5", "6", 7), t0 + Duration::from_secs(3));
        assert!(
            g.observe(&primary(), &write("7", "8", 7), t0 + Duration::from_secs(4))
                .is_some(),
            "the track survived a forget pass"
        );
        g.forget_quiet(t0 + Duration::from_secs(300));
        assert_eq!(
            g.observe(
                &primary(),
                &write("9", "10", 7),
                t0 + Duration::from_secs(301)
            ),
            None
        );
        assert_eq!(
            g.tracks.lock().unwrap().len(),
            1,
            "forgotten, then tracked anew"
        );
    }
}
