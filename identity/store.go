package identity

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wormsign/wormsign/bus"
	"github.com/wormsign/wormsign/retry"
)

// TopicConfig is the bindings topic's configuration: compacted, so that
// the latest record of every address survives, with a day of records kept
// uncompacted for consumers that follow behind.
var TopicConfig = map[string]string{
	"cleanup.policy":        "compact",
	"min.compaction.lag.ms": "86400000",
}

// kafkaBus is what the store needs of the Kafka bus.
type kafkaBus interface {
	EnsureTopic(ctx context.Context, topic string, partitions int, configs map[string]string) error
	Follow(ctx context.Context, topic string, fn func(bus.Message) error, caughtUp func()) error
}

// Store is a Table kept the same for every instance: with Kafka, each
// store follows the bindings topic from its start and applies every
// record; without, one process holds the table, saved to a state file.
// Record publishes new records (and applies them at once, so that the
// writer's next decision sees them).
type Store struct {
	config Configuration
	bus    bus.Bus
	logger *slog.Logger
	table  *Table

	listeners sync.RWMutex
	onApply   []func(Applied)

	mu       sync.Mutex // serialises Record, and the state file
	producer bus.Producer
	dirty    chan struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	// refused counts records the table had no room for, and malformed
	// ones read back.
	refused, malformed func()
}

// NewStore returns a store; it reads nothing until Start.
func NewStore(config Configuration, b bus.Bus, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.Default()
	}
	table := NewTable(config.MaxBindings, config.MaxHistory)
	table.SetClockSlack(config.ClockSlack)
	return &Store{config: config, bus: b, logger: logger, table: table,
		dirty: make(chan struct{}, 1), refused: func() {}, malformed: func() {}}
}

// Table is the store's table, for lookups.
func (s *Store) Table() *Table { return s.table }

// OnApply registers fn to hear of every record that changed the table
// from now on (containment moves a block with it); fn must not block.
func (s *Store) OnApply(fn func(Applied)) {
	s.listeners.Lock()
	defer s.listeners.Unlock()
	s.onApply = append(s.onApply, fn)
}

func (s *Store) durable() (kafkaBus, bool) {
	if s.bus == nil {
		return nil, false
	}
	kb, ok := s.bus.(kafkaBus)
	return kb, ok && s.bus.Durable()
}

// Start loads the table: it follows the topic until it has caught up (and
// goes on following it), or reads the state file.
func (s *Store) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	kb, durable := s.durable()
	if durable {
		if err := kb.EnsureTopic(ctx, s.config.Topic, 1, TopicConfig); err != nil {
			cancel()
			return fmt.Errorf("cannot create the bindings topic: %w", err)
		}
	}
	// Without Kafka the records go on the in-process topic too, for the
	// ClickHouse writer; the table itself is this process's.
	if s.bus != nil {
		p, err := s.bus.Producer(s.config.Topic)
		if err != nil {
			cancel()
			return fmt.Errorf("cannot publish bindings: %w", err)
		}
		s.producer = p
	}
	if durable {
		caught := make(chan struct{})
		var once sync.Once
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := retry.Do(ctx, retry.Backoff{Min: time.Second, Max: 30 * time.Second}, func(ctx context.Context) error {
				return kb.Follow(ctx, s.config.Topic, s.follow, func() { once.Do(func() { close(caught) }) })
			}, func(err error, wait time.Duration) {
				s.logger.Warn("cannot follow the bindings topic", "error", err, "retry_in", wait)
			})
			if err != nil && ctx.Err() == nil {
				s.logger.Error("bindings topic no longer followed", "error", err)
			}
		}()
		select {
		case <-caught:
		case <-time.After(time.Minute):
			cancel()
			s.wg.Wait()
			return fmt.Errorf("cannot read the bindings topic %s within a minute", s.config.Topic)
		}
	} else if s.config.StateFile != "" {
		if err := s.readStateFile(); err != nil {
			cancel()
			return err
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.saveLoop(ctx) }()
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.pruneLoop(ctx) }()
	return nil
}

// Stop ends following and saves the state file one last time.
func (s *Store) Stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.wg.Wait()
	if s.producer != nil {
		s.producer.Close()
	}
	if _, ok := s.durable(); !ok && s.config.StateFile != "" {
		if err := s.writeStateFile(); err != nil {
			s.logger.Error("cannot save bindings", "error", err)
		}
	}
}

func (s *Store) follow(m bus.Message) error {
	b, err := Unmarshal(m.Value)
	if err != nil {
		s.malformed()
		s.logger.Warn("skipping unreadable binding", "offset", m.Offset, "error", err)
		return nil
	}
	s.apply(b)
	return nil
}

func (s *Store) apply(b Binding) Applied {
	res := s.table.Apply(b)
	if !res.Stored {
		if len(res.Customers) == 0 && s.table.Len() >= s.config.MaxBindings {
			s.refused()
		}
		return res
	}
	s.listeners.RLock()
	defer s.listeners.RUnlock()
	for _, fn := range s.onApply {
		fn(res)
	}
	return res
}

// Record makes bs part of the table of every instance: published on the
// topic (with Kafka) and applied here at once. It returns what applying
// them changed here.
func (s *Store) Record(ctx context.Context, bs ...Binding) ([]Applied, error) {
	for i := range bs {
		bs[i].Prefix = bs[i].Prefix.Masked()
		if err := bs[i].Validate(); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.producer != nil {
		msgs := make([]bus.Message, 0, len(bs))
		for i := range bs {
			v, err := bs[i].Marshal()
			if err != nil {
				return nil, fmt.Errorf("cannot encode binding: %w", err)
			}
			msgs = append(msgs, bus.Message{Key: bs[i].TopicKey(), Value: v})
		}
		if err := s.producer.Publish(ctx, msgs...); err != nil {
			return nil, fmt.Errorf("cannot publish bindings: %w", err)
		}
	}
	out := make([]Applied, 0, len(bs))
	for _, b := range bs {
		out = append(out, s.apply(b))
	}
	select {
	case s.dirty <- struct{}{}:
	default:
	}
	return out, nil
}

func (s *Store) pruneLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if n := s.table.Prune(now.Add(-s.config.Keep).UnixMilli()); n > 0 {
				s.logger.Debug("pruned ended bindings", "count", n)
			}
		}
	}
}

// saveLoop rewrites the state file at most once a second after changes.
func (s *Store) saveLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.dirty:
		}
		if err := s.writeStateFile(); err != nil {
			s.logger.Error("cannot save bindings", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *Store) readStateFile() error {
	f, err := os.Open(s.config.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot read identity.state_file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		b, err := Unmarshal(sc.Bytes())
		if err != nil {
			return fmt.Errorf("identity.state_file %s line %d: %w", s.config.StateFile, line, err)
		}
		s.table.Apply(b)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("cannot read identity.state_file: %w", err)
	}
	return nil
}

// writeStateFile replaces the state file atomically (write, sync, rename).
func (s *Store) writeStateFile() error {
	path := s.config.StateFile
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("cannot write identity.state_file: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	for _, b := range s.table.All() {
		v, err := b.Marshal()
		if err != nil {
			tmp.Close()
			return fmt.Errorf("cannot encode binding: %w", err)
		}
		w.Write(v)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot write identity.state_file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot write identity.state_file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot write identity.state_file: %w", err)
	}
	return os.Rename(tmp.Name(), path)
}
