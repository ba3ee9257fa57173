package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/wormsign/wormsign/alert"
	"github.com/wormsign/wormsign/clickhousedb"
	"github.com/wormsign/wormsign/network"
)

// clickhouseStore reads history from the tables the sink writes (alerts,
// flows_1m) and keeps acknowledgements in incident_actions, which every
// console instance reads. Times are bound as Unix seconds (toDateTime(?)),
// which 18.16 and current servers read alike.
type clickhouseStore struct {
	db       *clickhousedb.DB
	instance string
	// subscribers names a subscriber as the sink wrote it (an IPv6 one
	// as its prefix).
	subscribers network.Subscribers
}

const alertSelect = `SELECT id, kind, state, subscriber_ip, subscriber_id, window_start, window_end,
	first_seen, last_seen, distinct_dsts, flows, score, exporter, evidence FROM `

// maxEvents bounds what one list request reads.
const maxEvents = 100000

func (s *clickhouseStore) table(name string) string { return s.db.Database() + "." + name }

func (s *clickhouseStore) queryAlerts(ctx context.Context, query string, args ...any) ([]alert.Alert, error) {
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("cannot query alerts: %w", err)
	}
	defer rows.Close()
	var out []alert.Alert
	for rows.Next() {
		var a alert.Alert
		var evidence string
		if err := rows.Scan(&a.ID, &a.Kind, &a.State, &a.SubscriberIP, &a.SubscriberID, &a.WindowStart,
			&a.WindowEnd, &a.FirstSeen, &a.LastSeen, &a.DistinctDsts, &a.Flows, &a.Score, &a.Exporter, &evidence); err != nil {
			return nil, fmt.Errorf("cannot read alerts: %w", err)
		}
		if evidence != "" {
			if err := json.Unmarshal([]byte(evidence), &a.Evidence); err != nil {
				return nil, fmt.Errorf("cannot decode evidence of alert %s: %w", a.ID, err)
			}
		}
		normalise(&a)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read alerts: %w", err)
	}
	return out, nil
}

func (s *clickhouseStore) Events(ctx context.Context, since time.Time) ([]alert.Alert, error) {
	// GLOBAL: on a cluster (clickhouse.cluster) both tables are
	// Distributed, and a plain IN over a Distributed subquery is refused
	// (distributed_product_mode 'deny'). On one server it is a plain IN.
	return s.queryAlerts(ctx, alertSelect+s.table("alerts")+` FINAL
		WHERE id GLOBAL IN (SELECT id FROM `+s.table("alerts")+` WHERE window_end >= toDateTime(?))
		LIMIT `+fmt.Sprint(maxEvents), since.Unix())
}

func (s *clickhouseStore) IncidentEvents(ctx context.Context, id string) ([]alert.Alert, error) {
	events, err := s.queryAlerts(ctx, alertSelect+s.table("alerts")+" FINAL WHERE id = ?", id)
	if err == nil && len(events) == 0 {
		err = errNotFound
	}
	return events, err
}

func (s *clickhouseStore) Acks(ctx context.Context, ids []string) (map[string][]Ack, error) {
	out := map[string][]Ack{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.db.Query(ctx, `SELECT incident_id, actor, note, at_ns FROM `+s.table("incident_actions")+`
		WHERE action = 'ack' AND has(?, incident_id) ORDER BY incident_id, at_ns`, ids)
	if err != nil {
		return nil, fmt.Errorf("cannot query incident_actions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var ack Ack
		var ns uint64
		if err := rows.Scan(&id, &ack.By, &ack.Note, &ns); err != nil {
			return nil, fmt.Errorf("cannot read incident_actions: %w", err)
		}
		ack.At = time.Unix(0, int64(ns)).UTC()
		out[id] = append(out[id], ack)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read incident_actions: %w", err)
	}
	return out, nil
}

func (s *clickhouseStore) AddAck(ctx context.Context, id string, ack Ack) error {
	batch, err := s.db.PrepareBatch(ctx, "INSERT INTO "+s.table("incident_actions")+
		" (date, incident_id, action, actor, note, at, at_ns, instance)")
	if err != nil {
		return fmt.Errorf("cannot record ack: %w", err)
	}
	defer batch.Abort()
	at := ack.At.UTC()
	day := time.Date(at.Year(), at.Month(), at.Day(), 0, 0, 0, 0, time.UTC)
	if err := batch.Append(day, id, "ack", ack.By, ack.Note, at, uint64(at.UnixNano()), s.instance); err != nil {
		return fmt.Errorf("cannot record ack: %w", err)
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot record ack: %w", err)
	}
	return nil
}

func (s *clickhouseStore) Series(ctx context.Context, ip netip.Addr, from, to time.Time) ([]Point, error) {
	rows, err := s.db.Query(ctx, `SELECT minute, sum(flows), sum(smtp_flows), uniqMerge(dsts), uniqMerge(smtp_dsts),
		sum(bytes), sum(packets)
		FROM `+s.table("flows_1m")+`
		WHERE subscriber_ip = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)
		GROUP BY minute ORDER BY minute`, s.subscribers.Label(ip), from.Unix(), to.Unix())
	if err != nil {
		return nil, fmt.Errorf("cannot query flows_1m: %w", err)
	}
	defer rows.Close()
	var out []Point
	for rows.Next() {
		var p Point
		if err := rows.Scan(&p.Minute, &p.Flows, &p.SMTPFlows, &p.Destinations, &p.SMTPDestinations, &p.Bytes, &p.Packets); err != nil {
			return nil, fmt.Errorf("cannot read flows_1m: %w", err)
		}
		p.Minute = p.Minute.UTC()
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read flows_1m: %w", err)
	}
	return out, nil
}

// Top ranks the subscribers of flows_1m. The aliases differ from the
// columns they sum: a current server would otherwise read "sum(flows) AS
// flows" as a cycle.
func (s *clickhouseStore) Top(ctx context.Context, kind string, from time.Time, limit int) ([]TopTalker, error) {
	by, ok := topKinds[kind]
	if !ok {
		return nil, fmt.Errorf("no top list of %q", kind)
	}
	having := "t_" + by[0]
	if kind == "smtp" {
		having = "t_smtp_flows"
	}
	rows, err := s.db.Query(ctx, `SELECT subscriber_ip, sum(flows) AS t_flows, sum(bytes) AS t_bytes,
		sum(packets) AS t_packets, uniqMerge(dsts) AS t_destinations,
		sum(smtp_flows) AS t_smtp_flows, uniqMerge(smtp_dsts) AS t_smtp_destinations
		FROM `+s.table("flows_1m")+`
		WHERE minute >= toDateTime(?)
		GROUP BY subscriber_ip
		HAVING `+having+` > 0
		ORDER BY t_`+by[0]+` DESC, t_`+by[1]+` DESC, subscriber_ip
		LIMIT `+fmt.Sprint(limit), from.Unix())
	if err != nil {
		return nil, fmt.Errorf("cannot query flows_1m: %w", err)
	}
	defer rows.Close()
	var out []TopTalker
	for rows.Next() {
		var t TopTalker
		if err := rows.Scan(&t.SubscriberIP, &t.Flows, &t.Bytes, &t.Packets, &t.Destinations, &t.SMTPFlows, &t.SMTPDestinations); err != nil {
			return nil, fmt.Errorf("cannot read flows_1m: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read flows_1m: %w", err)
	}
	return out, nil
}
