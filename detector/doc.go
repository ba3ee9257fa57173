// Package detector consumes flows, keeps sliding event-time windows per
// subscriber and publishes alerts on the alerts topic.
//
// # Rules
//
// smtp_fanout counts distinct TCP/25 destinations per subscriber over a
// short window (threshold in window, default 25 in 5 minutes) and a slow
// one (slow_threshold in slow_window, 100 in 60 minutes). Attempts without
// an ACK from the subscriber (or, unsampled and without flags, of three
// packets or fewer) are failed; failed and completed attempts are counted
// apart, and the failed share is in the evidence and raises the score up to
// twice. The sequential test (Threshold Random Walk, Jung et al. 2004) runs
// over first contacts (destinations not seen in the slow window): each
// failed one multiplies the odds of "infected" by
// (1-success_infected)/(1-success_benign), each completed one by
// success_infected/success_benign. At odds >=
// detection_probability/false_alarm_probability (and at least
// min_first_contacts) the incident opens before the threshold; at odds <=
// (1-detection_probability)/(1-false_alarm_probability) the walk restarts.
// The evidence names the trigger (threshold, slow_window, sequential) and
// carries the walk's decision and odds.
//
// dst_entropy computes the normalised Shannon entropy (H/log2(flows): 1
// when every flow goes somewhere else, 0 when all go to one place) of
// destination addresses and of destination ports over window, once a
// subscriber has min_flows in it. It opens on the worm pattern (at least
// worm_min_dsts addresses, address entropy >= worm_addr_entropy, port
// entropy <= worm_port_entropy) or on a departure from the subscriber's own
// exponentially weighted baseline of both entropies (after baseline_warmup
// minutes, by more than max(baseline_deviation standard deviations,
// baseline_min_delta)). It is evaluated on a subscriber's first flow of each
// event-time minute, when the baseline learns (frozen while an incident is
// open), and in between as flows arrive (amortised, no learning). ICMP error messages (type<<8|code in the
// destination port, as NetFlow exporters write it) are left out: they
// answer traffic the subscriber received.
//
// darknet counts distinct destinations inside darknet.networks (one bart
// lookup per flow) over window; min_dsts of them open an incident. Dark
// addresses are counted as observed, never scaled by sampling.
//
// relay_abuse counts TCP connections and bytes to relay_abuse.relays on
// its ports per subscriber over window (scaled by sampling) against
// max_connections (and max_bytes) and against an exponentially weighted
// baseline of connections per minute, quiet minutes included, learned on
// the subscriber's own relay flows and frozen while an incident is open.
//
// outbound_flood keeps, per subscriber and target (address and kind of
// traffic), per-minute packets, bytes and flows over min_minutes plus the
// minute in progress, and rates over the time those flows covered (their
// earliest start to their newest end), and the packets the target sent
// back. Once the traffic has lasted min_minutes, in three quarters of its
// seconds, it opens at the ceiling of its kind (max_icmp_pps, max_udp_pps,
// max_syn_pps, max_other_pps; UDP and other protocols only while the
// target answers at most max_answer_ratio), at max_pps, max_bps or
// max_flows_per_minute, or at baseline_factor times the busiest target's
// usual rate for that kind of traffic. TCP the subscriber ACKs is left out
// unless established_tcp. A subscriber gets flood state only past an
// inline gate of counted packets per minute.
//
// Every rule counts only the subscriber's own attempts (network.Attempt).
// Inbound flows reach the engine through Receive, in the subscriber's
// order: they fill the table of exchanges (received.go) that tells an
// answer from an attempt, and the answers outbound_flood weighs. Both are
// deterministic in the subscriber's own flows, so replays stay equal.
//
// Every rule is one file (rule_*.go) behind the rule interface (rule.go):
// which flows it wants, its per-subscriber state (behind subscriber.more,
// allocated by the rule), its evaluation and evidence, its cool-down and
// how long its state matters. Process dispatches in ruleTable order; the
// engine keeps incidents, their lifecycle and the timers. Every rule works
// on the flow's own event time only, so the event-time guarantees below
// hold for each.
//
// # Lifecycle
//
// One incident per subscriber and kind: open on crossing, update at most
// once per update_interval and only when the count grew, resolved after
// cooldown below the rule. The id hashes subscriber, kind and the event
// time of the opening flow, so a replay gives the same ids.
//
// # Event time
//
// Windows are built from one-minute buckets on the flow end time. Each
// Kafka partition has its own engine and its own watermark. Many sources
// feed one partition: every exporter and observation domain, as written by
// every collector publisher (the message's origin: collector instance and
// publisher shard), and each runs at its own pace. Within a source, flows
// arrive roughly in end-time order; across sources they do not. The
// watermark is therefore the slowest active source's newest flow end, as
// Flink and Beam combine the watermarks of their inputs, never the newest
// flow seen: a source running ahead cannot make another's flows late.
//
//   - A source is active while one of its flows reached the partition
//     within source_idle_timeout of wall clock; an idle or vanished source
//     (an exporter switched off, a collector restarted under a new origin)
//     stops holding the others back after that. A source that lags in event
//     time but keeps sending is not idle: it holds the watermark back and
//     loses nothing.
//   - A source first seen behind the watermark is catching up: its flows
//     are accepted (within the longest window) and it holds the watermark
//     until it reaches it. A source further behind than the longest window
//     (a broken clock) does not hold anyone back.
//   - Flows older than the watermark minus allowed_lateness are late:
//     dropped and counted per exporter. Flows ending after their receive
//     time by more than the allowed lateness have their end taken as the
//     receive time.
//   - Timers (an incident's cool-down, a subscriber's eviction) are judged
//     at minute boundaries and fire when the watermark minus the allowed
//     lateness passes them: no flow that could still arrive can change
//     them then. A subscriber's own flow fires the timers its time has
//     passed before it is counted, exactly as the sweep of that minute
//     would. What the engine decides thus depends only on each
//     subscriber's own flows in their order, which the collector keeps,
//     and not on how sources interleave; holding the watermark back only
//     delays when resolutions are announced.
//
// When a partition receives nothing for idle_advance (wall clock), its
// event time follows the wall clock so that incidents still resolve.
// Replay feeds captures at full speed, where no source idles, and prints
// the alerts in event-time order; it gives the same alerts (ids, states,
// counts, windows) on every run and as a live run of the same datagrams.
//
// # Sampling
//
// A flow exported at 1:N stands for N flows: flow, failed and completed
// counts (and min_flows) are scaled by N, so the failed share is unbiased.
// Distinct destinations are counted as observed, never scaled: scaling
// would turn a legitimate sender's few busy relationships into hundreds of
// phantom destinations. They are a lower bound under sampling, so thresholds
// for sampled access networks belong in a subscriber group with lower
// values. Entropies are computed on the observed flows; uniform sampling
// keeps the shape of the distribution and, normalised by the observed
// count, its value. Without TCP flags a sampled flow's packet count says
// nothing, so it counts as completed: only evidence makes a failure. The
// sequential test steps once per observed first contact. Alerts carry
// sampling_rate in the evidence.
//
// # Memory
//
// State exists only for subscribers with traffic in the windows, and is
// evicted after the longest window plus the allowed lateness without
// traffic (the baseline with it). The subscriber table is split in sixteen
// shards, one of which is visited each event-time minute for expiry and
// eviction (so eviction comes up to sixteen minutes later); the minute
// sweep itself only visits subscribers with an open incident, which keeps
// its pause at a few tens of milliseconds for a million subscribers. A
// quiet subscriber costs about 150 bytes (bench/detector; table.go). Destinations of TCP/25 are kept exactly up to
// max_destinations, then counted with per-minute HyperLogLog sketches
// (2^10 registers, 3.3% standard error); dst_entropy keeps up to
// max_records (destination, port, minute) records, then thins them by a
// hash of the destination (adaptive sampling) and scales counts back.
//
// # Scale-out
//
// Flows are keyed by subscriber, so one instance sees every flow of the
// subscribers of its partitions. When the consumer group gives an instance
// a partition, the instance re-reads rebuild_lookback of the partition
// (by Kafka message time) into a fresh engine without publishing, then
// reads the alerts topic back over incident_lookback and takes over the
// incidents left open, and only then goes on from the committed offset.
// Both read-backs are retried until they succeed (a lost broker's
// partitions have no leader for some seconds): detecting before would
// open the incidents again. On losing a partition it commits what it
// finished and gives its subscribers' room in max_subscribers back. A rebalance thus
// neither loses nor repeats an incident, and ids carry over.
//
// # Groups, allow list, subscriber map
//
// groups override any rule setting for subscribers in their networks
// (longest prefix wins; the keys a group names replace the global ones,
// zero included, the others inherit) and may disable a rule. allow_list networks (prefixes or bare addresses) are never
// alerted on. subscriber_map is a CSV file of "network,subscriber_id"
// lines, longest prefix wins, re-read when its size or time changes; the
// id goes into alerts.
package detector
