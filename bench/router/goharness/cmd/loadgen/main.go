// Command loadgen is one worker process of the router benchmark's load
// generator in Go: what bench/router/loadgen.py's worker does, at a fraction
// of its CPU.
//
// Why it exists: the benchmark runs on a 2-core machine where the load
// generator, the stand-in pods and the proxy under test share the CPU. At
// 1000 streams the Python workers took 0.45-0.75 cores, and that contention
// showed up as the router's latency. bench/router/loadgen.py's GoGenerator
// starts W of these and drives them over stdin/stdout, one JSON object a line:
//
//	parent: {"cmd":"phase", <PhaseSpec fields>, "rtt_file": P, "lateness_file": P}
//	worker: {"event":"connected","connected":N,"connect_errors":[...],"connect_seconds":S}
//	parent: {"cmd":"go","t0_wall":UNIX_SECONDS,"t0_mono":PARENT_MONOTONIC} (or {"cmd":"abort"})
//	worker: {"event":"result", <WorkerResult fields but rtts and lateness>}
//	parent: the next phase, or {"cmd":"quit"} (or EOF)
//
// The schedule, the numbers and their meaning are loadgen.py's: stream i of N
// sends frame k at t0 + k*period + (i/N)*period, one sender goroutine over
// all streams in due order; one reader goroutine per connection timestamps
// each ack as it arrives (Go's monotonic clock). Round trips and send lags of
// counted frames are written to rtt_file and lateness_file as little-endian
// float64 arrays; first_send and last_send are reported on the parent's
// monotonic clock (t0_mono), so spans compare across workers.
package main

import (
	"bufio"
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"voxfleetbench/internal/wsframe"
)

const (
	// early: a frame due within this much of now is sent now; it is not counted as late (as loadgen.py).
	early = time.Millisecond
	// start is loadgen.START, byte for byte.
	start = `{"type":"start","sample_rate":16000,"encoding":"pcm16","channels":1,"language":"en",` +
		`"priority":"normal","options":{"partials":false}}`
	endMsg      = `{"type":"end"}`
	maxErrors   = 20
	ackPrefix   = `{"type":"ack","seq":`
	lineMaxSize = 64 << 20
)

type streamSpec struct {
	Index int    `json:"index"`
	Host  string `json:"host"`
	Port  int    `json:"port"`
	Path  string `json:"path"`
}

// phaseSpec is loadgen.PhaseSpec plus the files for the raw numbers.
type phaseSpec struct {
	Streams            []streamSpec `json:"streams"`
	NTotal             int          `json:"n_total"`
	Frames             int          `json:"frames"`
	WarmupFrames       int          `json:"warmup_frames"`
	Period             float64      `json:"period"`
	AudioBytes         int          `json:"audio_bytes"`
	ConnectConcurrency int          `json:"connect_concurrency"`
	ConnectTimeout     float64      `json:"connect_timeout"`
	GoTimeout          float64      `json:"go_timeout"`
	TailSeconds        float64      `json:"tail_seconds"`
	CloseTimeout       float64      `json:"close_timeout"`
	RttFile            string       `json:"rtt_file"`
	LatenessFile       string       `json:"lateness_file"`
}

type command struct {
	Cmd    string   `json:"cmd"`
	T0Wall float64  `json:"t0_wall"`
	T0Mono *float64 `json:"t0_mono"`
}

// result is loadgen.WorkerResult without rtts and lateness (those go to files).
type result struct {
	Event           string   `json:"event"`
	Worker          int      `json:"worker"`
	Streams         int      `json:"streams"`
	Connected       int      `json:"connected"`
	ConnectErrors   []string `json:"connect_errors"`
	FramesScheduled int      `json:"frames_scheduled"`
	FramesSent      int      `json:"frames_sent"`
	FramesCounted   int      `json:"frames_counted"`
	EchoesCounted   int      `json:"echoes_counted"`
	Censored        int      `json:"censored"`
	FirstSend       *float64 `json:"first_send"`
	LastSend        *float64 `json:"last_send"`
	StreamErrors    []string `json:"stream_errors"`
	EndedClean      int      `json:"ended_clean"`
	ConnectSeconds  float64  `json:"connect_seconds"`
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// errorSink collects stream errors from every goroutine of a phase.
type errorSink struct {
	mu   sync.Mutex
	errs []string
}

func (e *errorSink) add(format string, args ...any) {
	e.mu.Lock()
	e.errs = append(e.errs, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

func (e *errorSink) capped() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := slices.Clone(e.errs[:min(len(e.errs), maxErrors)])
	if len(e.errs) > maxErrors {
		out = append(out, fmt.Sprintf("... %d more", len(e.errs)-maxErrors))
	}
	return out
}

// phase is what a worker's streams share during one phase.
type phase struct {
	spec   *phaseSpec
	base   time.Time    // the origin of every timestamp below (monotonic)
	echoes atomic.Int64 // counted echoes so far (for the tail wait)
	errs   errorSink
	audio  []byte
}

// stream is one session on the wire (client side).
type stream struct {
	spec   streamSpec
	ph     *phase
	offset time.Duration
	c      net.Conn
	mask   [4]byte
	open   atomic.Bool
	closed chan struct{} // closed when the reader goroutine is done (the connection is gone)
	ready  chan error    // the answer to `start`

	wmu   sync.Mutex // writes: the sender and the reader (pongs, the close answer)
	frame []byte     // the masked audio frame; only its seq header changes

	mu        sync.Mutex // what the reader and the sender share
	sent      []time.Duration
	echoed    []bool
	rtts      []float64
	done      bool // censored: later echoes no longer count
	readied   bool
	gotEnd    bool
	closeCode int
	weClosed  bool
}

func (s *stream) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.c.Write(b)
	return err
}

func (s *stream) control(op byte, payload []byte) {
	s.write(wsframe.ClientFrame(op, payload, s.mask[:]))
}

// signalReady answers the connect step once; later calls do nothing. Call with mu held.
func (s *stream) signalReady(err error) bool {
	if s.readied {
		return false
	}
	s.readied = true
	s.ready <- err
	return true
}

func (s *stream) sendFrame(seq int, now time.Duration) error {
	s.mu.Lock()
	s.sent[seq] = now
	s.mu.Unlock()
	hdr := len(s.frame) - 4 - s.ph.spec.AudioBytes
	binary.BigEndian.PutUint32(s.frame[hdr:], uint32(seq)^binary.BigEndian.Uint32(s.mask[:]))
	return s.write(s.frame)
}

// read is the stream's reader goroutine: every message, timestamped on arrival.
func (s *stream) read(r *bufio.Reader) {
	defer close(s.closed)
	defer s.c.Close()
	frames := wsframe.NewReader(r, false)
	for {
		op, payload, err := frames.Next()
		now := time.Since(s.ph.base)
		if err != nil {
			s.open.Store(false)
			s.mu.Lock()
			if !s.signalReady(fmt.Errorf("connection lost before ready (%v)", err)) && errors.Is(err, wsframe.ErrProtocol) {
				s.ph.errs.add("stream %d: %v", s.spec.Index, err)
			}
			s.mu.Unlock()
			return
		}
		switch op {
		case wsframe.OpText:
			s.onText(payload, now)
		case wsframe.OpPing:
			s.control(wsframe.OpPong, payload)
		case wsframe.OpClose:
			s.open.Store(false)
			s.mu.Lock()
			s.closeCode = wsframe.CloseCode(payload)
			answer := !s.weClosed
			s.weClosed = true
			if !s.signalReady(fmt.Errorf("closed %d before ready", s.closeCode)) && !s.gotEnd {
				s.ph.errs.add("stream %d: closed %d while streaming", s.spec.Index, s.closeCode)
			}
			s.mu.Unlock()
			if answer {
				s.control(wsframe.OpClose, payload[:min(2, len(payload))])
			}
			// the server closes TCP after the closing handshake; the close timeout covers one that does not
		}
	}
}

func (s *stream) onText(payload []byte, now time.Duration) {
	// the stand-in's ack (and the router's) starts like this: skip the JSON decoder for it
	if seq, ok := fastAck(payload); ok {
		s.onAck(seq, now)
		return
	}
	var msg struct {
		Type    string `json:"type"`
		Seq     any    `json:"seq"`
		Code    any    `json:"code"`
		Message any    `json:"message"`
	}
	if err := json.Unmarshal(payload, &msg); err != nil {
		s.ph.errs.add("stream %d: invalid JSON %q", s.spec.Index, payload[:min(80, len(payload))])
		return
	}
	switch msg.Type {
	case "ack":
		if f, ok := msg.Seq.(float64); ok && f == math.Trunc(f) {
			s.onAck(int(f), now)
		}
	case "ready":
		s.open.Store(true)
		s.mu.Lock()
		s.signalReady(nil)
		s.mu.Unlock()
	case "end":
		s.mu.Lock()
		s.gotEnd = true
		s.mu.Unlock()
	case "error":
		s.ph.errs.add("stream %d: error %v: %v", s.spec.Index, msg.Code, msg.Message)
		s.mu.Lock()
		s.signalReady(fmt.Errorf("refused: %v: %v", msg.Code, msg.Message))
		s.mu.Unlock()
	}
	// queued, token, warning: nothing to measure
}

func (s *stream) onAck(seq int, now time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < 0 || seq >= len(s.sent) || s.echoed[seq] || s.sent[seq] == 0 {
		return
	}
	s.echoed[seq] = true
	if seq >= s.ph.spec.WarmupFrames && !s.done {
		s.rtts = append(s.rtts, (now - s.sent[seq]).Seconds())
		s.ph.echoes.Add(1)
	}
}

// fastAck reads seq from `{"type":"ack","seq":S,...`; ok is false for anything else.
func fastAck(b []byte) (int, bool) {
	if len(b) <= len(ackPrefix) || string(b[:len(ackPrefix)]) != ackPrefix {
		return 0, false
	}
	i := len(ackPrefix)
	j := i
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j == i || j >= len(b) || (b[j] != ',' && b[j] != '}') {
		return 0, false
	}
	seq, err := strconv.Atoi(string(b[i:j]))
	return seq, err == nil
}

func makeAudio(n int) []byte {
	rng := mrand.New(mrand.NewPCG(1234, 0))
	audio := make([]byte, n)
	for i := 0; i+1 < n; i += 2 {
		binary.LittleEndian.PutUint16(audio[i:], uint16(int16(rng.IntN(601)-300)))
	}
	return audio
}

// connect opens one stream: TCP, handshake, `start`, `ready`; all before deadline.
func (ph *phase) connect(spec streamSpec, deadline time.Time) (*stream, error) {
	sp := ph.spec
	s := &stream{spec: spec, ph: ph, closed: make(chan struct{}), ready: make(chan error, 1),
		offset: seconds(float64(spec.Index) / float64(sp.NTotal) * sp.Period),
		sent:   make([]time.Duration, sp.Frames), echoed: make([]bool, sp.Frames)}
	rand.Read(s.mask[:])
	s.frame = wsframe.ClientFrame(wsframe.OpBinary, append(make([]byte, 4), ph.audio...), s.mask[:])
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("tcp", net.JoinHostPort(spec.Host, strconv.Itoa(spec.Port)))
	if err != nil {
		return nil, err
	}
	s.c = c
	c.SetDeadline(deadline)
	key := wsframe.NewKey()
	if _, err := c.Write(wsframe.ClientRequest(spec.Host, spec.Port, spec.Path, key)); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(c, 32*1024)
	first, headers, err := wsframe.ReadHead(r)
	if err == nil {
		err = wsframe.CheckResponse(first, headers, key)
	}
	if err == nil {
		_, err = c.Write(wsframe.ClientFrame(wsframe.OpText, []byte(start), s.mask[:]))
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	go s.read(r)
	select {
	case err = <-s.ready:
	case <-time.After(time.Until(deadline)):
		err = os.ErrDeadlineExceeded
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// connectAll opens every stream of the phase, ConnectConcurrency at a time, within ConnectTimeout.
func (ph *phase) connectAll(res *result) []*stream {
	sp := ph.spec
	began := time.Now()
	deadline := began.Add(seconds(sp.ConnectTimeout))
	limit := make(chan struct{}, max(1, sp.ConnectConcurrency))
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		streams []*stream
		pending int
	)
	for _, spec := range sp.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case limit <- struct{}{}:
				defer func() { <-limit }()
			case <-time.After(time.Until(deadline)):
				mu.Lock()
				pending++
				mu.Unlock()
				return
			}
			s, err := ph.connect(spec, deadline)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				streams = append(streams, s)
			case errors.Is(err, os.ErrDeadlineExceeded):
				pending++
			case len(res.ConnectErrors) < maxErrors:
				res.ConnectErrors = append(res.ConnectErrors, fmt.Sprintf("stream %d: %v", spec.Index, err))
			default:
				res.ConnectErrors = append(res.ConnectErrors, "...")
			}
		}()
	}
	wg.Wait()
	if pending > 0 {
		res.ConnectErrors = append(res.ConnectErrors, fmt.Sprintf("%d streams not ready within %g s", pending, sp.ConnectTimeout))
	}
	streams = slices.DeleteFunc(streams, func(s *stream) bool { return !s.open.Load() })
	res.ConnectSeconds = math.Round(time.Since(began).Seconds()*1000) / 1000
	res.Connected = len(streams)
	return streams
}

// sendAll is loadgen._send_all: every frame of every stream on its schedule, in due order.
func (ph *phase) sendAll(streams []*stream, t0 time.Time, t0Ref float64, res *result) []float64 {
	sp := ph.spec
	order := slices.Clone(streams)
	slices.SortStableFunc(order, func(a, b *stream) int { return cmp.Compare(a.offset, b.offset) })
	lateness := make([]float64, 0, len(streams)*max(0, sp.Frames-sp.WarmupFrames))
	var first, last time.Time
	for k := range sp.Frames {
		baseK := t0.Add(seconds(float64(k) * sp.Period))
		for _, s := range order {
			due := baseK.Add(s.offset)
			now := time.Now()
			if wait := due.Sub(now); wait > early {
				time.Sleep(wait)
				now = time.Now()
			}
			res.FramesScheduled++
			if !s.open.Load() {
				continue
			}
			if err := s.sendFrame(k, now.Sub(ph.base)); err != nil {
				s.open.Store(false)
				ph.errs.add("stream %d: write: %v", s.spec.Index, err)
				continue
			}
			res.FramesSent++
			if first.IsZero() {
				first = now
			}
			last = now
			if k >= sp.WarmupFrames {
				res.FramesCounted++
				lateness = append(lateness, max(0, now.Sub(due).Seconds()))
			}
		}
	}
	if !first.IsZero() {
		f, l := t0Ref+first.Sub(t0).Seconds(), t0Ref+last.Sub(t0).Seconds()
		res.FirstSend, res.LastSend = &f, &l
	}
	return lateness
}

// run is loadgen.run_phase: connect, report, wait for go, send, collect, end.
func (ph *phase) run(res *result, lines <-chan string) (quit bool) {
	sp := ph.spec
	streams := ph.connectAll(res)
	emit(map[string]any{"event": "connected", "connected": res.Connected, "connect_errors": nonNil(res.ConnectErrors),
		"connect_seconds": res.ConnectSeconds})
	var cmd command
	select {
	case line, ok := <-lines:
		if !ok {
			quit = true
		} else if err := json.Unmarshal([]byte(line), &cmd); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: bad command %q: %v\n", line, err)
		}
	case <-time.After(seconds(sp.GoTimeout)):
	}
	if cmd.Cmd != "go" {
		for _, s := range streams {
			s.c.Close()
		}
		writeFloats(sp.RttFile, nil)
		writeFloats(sp.LatenessFile, nil)
		return quit || cmd.Cmd == "quit"
	}
	// the parent's wall-clock t0, once, onto Go's monotonic clock
	now := time.Now()
	t0 := now.Add(seconds(cmd.T0Wall - float64(now.UnixNano())/1e9))
	t0Ref := cmd.T0Wall
	if cmd.T0Mono != nil {
		t0Ref = *cmd.T0Mono
	}
	lateness := ph.sendAll(streams, t0, t0Ref, res)

	// the last echoes: until every counted frame is back, or the tail time is over
	tail := time.Now().Add(seconds(sp.TailSeconds))
	for time.Now().Before(tail) && ph.echoes.Load() < int64(res.FramesCounted) {
		time.Sleep(20 * time.Millisecond)
	}
	// a counted frame still without its echo took at least until now: it enters at that lower bound (censored)
	end := time.Since(ph.base)
	var rtts []float64
	for _, s := range streams {
		s.mu.Lock()
		s.done = true
		res.EchoesCounted += len(s.rtts)
		rtts = append(rtts, s.rtts...)
		for seq := sp.WarmupFrames; seq < sp.Frames; seq++ {
			if s.sent[seq] != 0 && !s.echoed[seq] {
				rtts = append(rtts, (end - s.sent[seq]).Seconds())
				res.Censored++
			}
		}
		s.mu.Unlock()
	}
	writeFloats(sp.RttFile, rtts)
	writeFloats(sp.LatenessFile, lateness)

	// end every session and wait for the closing handshakes (bounded)
	endFrame := func(s *stream) []byte { return wsframe.ClientFrame(wsframe.OpText, []byte(endMsg), s.mask[:]) }
	for _, s := range streams {
		s.write(endFrame(s))
	}
	timeout := time.After(seconds(sp.CloseTimeout))
wait:
	for _, s := range streams {
		select {
		case <-s.closed:
		case <-timeout:
			break wait
		}
	}
	for _, s := range streams {
		s.mu.Lock()
		if s.gotEnd && s.closeCode == 1000 {
			res.EndedClean++
		}
		s.mu.Unlock()
		s.c.Close() // a no-op for the closed ones
	}
	res.StreamErrors = ph.errs.capped()
	return false
}

func writeFloats(path string, values []float64) {
	if path == "" {
		return
	}
	buf := make([]byte, 8*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint64(buf[8*i:], math.Float64bits(v))
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func emit(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(append(line, '\n'))
}

func main() {
	worker := flag.Int("worker", 0, "this worker's number (reported back)")
	flag.Parse()
	lines := make(chan string)
	go func() {
		scanner := bufio.NewScanner(os.Stdin)
		scanner.Buffer(make([]byte, 1<<20), lineMaxSize)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		close(lines)
	}()
	for line := range lines {
		var head struct {
			Cmd string `json:"cmd"`
		}
		if err := json.Unmarshal([]byte(line), &head); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: bad command %q: %v\n", line, err)
			continue
		}
		if head.Cmd == "quit" {
			return
		}
		if head.Cmd != "phase" {
			continue
		}
		spec := &phaseSpec{Period: 0.1, AudioBytes: 3200, ConnectConcurrency: 50, ConnectTimeout: 60, GoTimeout: 120,
			TailSeconds: 2, CloseTimeout: 10}
		if err := json.Unmarshal([]byte(line), spec); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: bad phase: %v\n", err)
			continue
		}
		ph := &phase{spec: spec, base: time.Now(), audio: makeAudio(spec.AudioBytes)}
		res := &result{Event: "result", Worker: *worker, Streams: len(spec.Streams)}
		quit := ph.run(res, lines)
		res.ConnectErrors, res.StreamErrors = nonNil(res.ConnectErrors), nonNil(res.StreamErrors)
		emit(res)
		if quit {
			return
		}
	}
}
