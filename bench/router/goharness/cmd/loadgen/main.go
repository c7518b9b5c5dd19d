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
// sends frame k at t0 + k*period + (i/N)*period. One epoll loop on one thread
// (internal/evloop says why) does everything: it connects (non-blocking, at
// most connect_concurrency at a time), sends every frame that is due (within
// 1 ms) in due order, and sleeps in epoll_wait until the next one is due or
// an ack arrives; each ack is timestamped right after the read that brought
// it (Go's monotonic clock). Round trips and send lags of
// counted frames are written to rtt_file and lateness_file as little-endian
// float64 arrays; first_send and last_send are reported on the parent's
// monotonic clock (t0_mono), so spans compare across workers.
package main

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"time"

	"voxfleetbench/internal/evloop"
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

// burst: after this many frames sent in a row the loop reads what has arrived (the acks' timestamps stay honest).
const burst = 32

// phase is what a worker's streams share during one phase.
type phase struct {
	spec   *phaseSpec
	base   time.Time // the origin of every timestamp below (monotonic)
	echoes int       // counted echoes so far (for the tail wait)
	errs   []string
	audio  []byte
	poller *evloop.Poller
	lines  *lineReader
	buf    []byte    // the loop's read buffer
	conns  []*stream // by fd
	addrs  map[string]syscall.Sockaddr
	res    *result
	// the connect step
	connecting int
	ready      []*stream
}

func (ph *phase) addError(format string, args ...any) {
	ph.errs = append(ph.errs, fmt.Sprintf(format, args...))
}

func (ph *phase) cappedErrors() []string {
	out := slices.Clone(ph.errs[:min(len(ph.errs), maxErrors)])
	if len(ph.errs) > maxErrors {
		out = append(out, fmt.Sprintf("... %d more", len(ph.errs)-maxErrors))
	}
	return out
}

// poll waits at most timeout for the sockets (and stdin) and serves what is ready.
func (ph *phase) poll(timeout time.Duration) {
	for _, ev := range ph.poller.Wait(timeout) {
		fd := int(ev.Fd)
		switch {
		case fd == 0:
			ph.lines.fill()
		case fd < len(ph.conns) && ph.conns[fd] != nil:
			ph.conns[fd].onEvent(ev)
		}
	}
}

func (ph *phase) drop(s *stream) {
	if !s.Closed {
		s.open = false
		ph.conns[s.Fd] = nil
		s.Close()
	}
}

// connectError records why a stream did not connect (as loadgen.py: 20, then "..." for each one more).
func (ph *phase) connectError(index int, err error) {
	if len(ph.res.ConnectErrors) < maxErrors {
		ph.res.ConnectErrors = append(ph.res.ConnectErrors, fmt.Sprintf("stream %d: %v", index, err))
	} else {
		ph.res.ConnectErrors = append(ph.res.ConnectErrors, "...")
	}
}

// stream states
const (
	dialing     = iota // the TCP connect is under way
	handshaking        // the upgrade request is sent
	messages           // the 101 came and `start` is sent: WebSocket messages from here on
)

// stream is one session on the wire (client side).
type stream struct {
	evloop.Conn
	spec   streamSpec
	ph     *phase
	state  int
	key    string
	offset time.Duration
	mask   [4]byte
	frames wsframe.Parser
	frame  []byte // the masked audio frame; only its seq header changes
	open   bool

	sent      []time.Duration
	echoed    []bool
	rtts      []float64
	done      bool // censored: later echoes no longer count
	readied   bool
	gotEnd    bool
	closeCode int
	weClosed  bool
}

func (s *stream) control(op byte, payload []byte) {
	s.Write(wsframe.ClientFrame(op, payload, s.mask[:]))
}

// signalReady ends the stream's connect step once (err == nil: it is ready); later calls do nothing.
func (s *stream) signalReady(err error) bool {
	if s.readied {
		return false
	}
	s.readied = true
	s.ph.connecting--
	if err != nil {
		s.ph.connectError(s.spec.Index, err)
		s.ph.drop(s)
	} else {
		s.ph.ready = append(s.ph.ready, s)
	}
	return true
}

func (s *stream) sendFrame(seq int, now time.Duration) error {
	s.sent[seq] = now
	hdr := len(s.frame) - 4 - s.ph.spec.AudioBytes
	binary.BigEndian.PutUint32(s.frame[hdr:], uint32(seq)^binary.BigEndian.Uint32(s.mask[:]))
	return s.Write(s.frame)
}

func (s *stream) onEvent(ev syscall.EpollEvent) {
	if s.state == dialing {
		errno, err := syscall.GetsockoptInt(s.Fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err == nil && errno != 0 {
			err = syscall.Errno(errno)
		}
		if err == nil {
			s.state = handshaking
			s.key = wsframe.NewKey()
			err = s.Write(wsframe.ClientRequest(s.spec.Host, s.spec.Port, s.spec.Path, s.key))
		}
		if err == nil && !s.Pending() {
			err = s.Flush() // EPOLLOUT off
		}
		if err != nil {
			s.signalReady(fmt.Errorf("connect %s:%d: %v", s.spec.Host, s.spec.Port, err))
		}
		return
	}
	if evloop.Writable(ev) {
		if err := s.Flush(); err != nil {
			s.lost(err)
			return
		}
	}
	if evloop.Readable(ev) {
		s.onReadable()
	}
}

// lost: the connection failed or the server closed it.
func (s *stream) lost(err error) {
	s.open = false
	if !s.signalReady(fmt.Errorf("connection lost before ready (%v)", err)) && errors.Is(err, wsframe.ErrProtocol) {
		s.ph.addError("stream %d: %v", s.spec.Index, err)
	}
	s.ph.drop(s)
}

// onReadable reads once and handles every whole message that came, all timestamped after the read.
func (s *stream) onReadable() {
	data, err := s.Read(s.ph.buf)
	now := time.Since(s.ph.base)
	if err != nil {
		s.lost(err)
		return
	}
	if data == nil {
		return
	}
	used := 0
	if s.state == handshaking {
		first, headers, n, err := wsframe.ParseHead(data)
		if err == nil && n > 0 {
			err = wsframe.CheckResponse(first, headers, s.key)
		}
		if err == nil && n > 0 {
			err = s.Write(wsframe.ClientFrame(wsframe.OpText, []byte(start), s.mask[:]))
		}
		if err != nil {
			s.signalReady(err)
			return
		}
		if n == 0 {
			s.Keep(data)
			return
		}
		used, s.state = n, messages
	}
	for !s.Closed {
		op, payload, n, err := s.frames.Next(data[used:])
		if err != nil {
			s.lost(err)
			return
		}
		if n == 0 {
			break
		}
		used += n
		switch op {
		case wsframe.OpText:
			s.onText(payload, now)
		case wsframe.OpPing:
			s.control(wsframe.OpPong, payload)
		case wsframe.OpClose:
			s.open = false
			s.closeCode = wsframe.CloseCode(payload)
			answer := !s.weClosed
			s.weClosed = true
			if !s.signalReady(fmt.Errorf("closed %d before ready", s.closeCode)) && !s.gotEnd {
				s.ph.addError("stream %d: closed %d while streaming", s.spec.Index, s.closeCode)
			}
			if answer && !s.Closed {
				s.control(wsframe.OpClose, payload[:min(2, len(payload))])
			}
			// the server closes TCP after the closing handshake; the close timeout covers one that does not
		}
	}
	if !s.Closed {
		s.Keep(data[used:])
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
		s.ph.addError("stream %d: invalid JSON %q", s.spec.Index, payload[:min(80, len(payload))])
		return
	}
	switch msg.Type {
	case "ack":
		if f, ok := msg.Seq.(float64); ok && f == math.Trunc(f) {
			s.onAck(int(f), now)
		}
	case "ready":
		s.open = true
		s.signalReady(nil)
	case "end":
		s.gotEnd = true
	case "error":
		s.ph.addError("stream %d: error %v: %v", s.spec.Index, msg.Code, msg.Message)
		s.signalReady(fmt.Errorf("refused: %v: %v", msg.Code, msg.Message))
	}
	// queued, token, warning: nothing to measure
}

func (s *stream) onAck(seq int, now time.Duration) {
	if seq < 0 || seq >= len(s.sent) || s.echoed[seq] || s.sent[seq] == 0 {
		return
	}
	s.echoed[seq] = true
	if seq >= s.ph.spec.WarmupFrames && !s.done {
		s.rtts = append(s.rtts, (now - s.sent[seq]).Seconds())
		s.ph.echoes++
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

// dial starts one stream's connect step: a non-blocking TCP connect; onEvent does the rest.
func (ph *phase) dial(spec streamSpec) {
	sp := ph.spec
	s := &stream{spec: spec, ph: ph, frames: wsframe.Parser{ExpectMasked: false},
		offset: seconds(float64(spec.Index) / float64(sp.NTotal) * sp.Period),
		sent:   make([]time.Duration, sp.Frames), echoed: make([]bool, sp.Frames)}
	rand.Read(s.mask[:])
	s.frame = wsframe.ClientFrame(wsframe.OpBinary, append(make([]byte, 4), ph.audio...), s.mask[:])
	hostPort := spec.Host + ":" + strconv.Itoa(spec.Port)
	sa, family := ph.addrs[hostPort], syscall.AF_INET
	if _, v6 := sa.(*syscall.SockaddrInet6); v6 {
		family = syscall.AF_INET6
	}
	var err error
	if sa == nil {
		if sa, family, err = evloop.Sockaddr(spec.Host, spec.Port); err != nil {
			ph.connectError(spec.Index, err)
			return
		}
		ph.addrs[hostPort] = sa
	}
	fd, err := evloop.Socket(family)
	if err == nil {
		if err = syscall.Connect(fd, sa); err == syscall.EINPROGRESS {
			err = nil
		}
		if err == nil {
			err = s.Attach(ph.poller, fd, true)
		}
		if err != nil {
			syscall.Close(fd)
		}
	}
	if err != nil {
		ph.connectError(spec.Index, fmt.Errorf("connect %s: %v", hostPort, err))
		return
	}
	for len(ph.conns) <= fd {
		ph.conns = append(ph.conns, nil)
	}
	ph.conns[fd] = s
	ph.connecting++
}

// connectAll opens every stream of the phase, ConnectConcurrency at a time, within ConnectTimeout.
func (ph *phase) connectAll() []*stream {
	sp, res := ph.spec, ph.res
	began := time.Now()
	deadline := began.Add(seconds(sp.ConnectTimeout))
	next := 0
	for time.Now().Before(deadline) {
		for ph.connecting < max(1, sp.ConnectConcurrency) && next < len(sp.Streams) {
			ph.dial(sp.Streams[next])
			next++
		}
		if ph.connecting == 0 && next == len(sp.Streams) {
			break
		}
		ph.poll(time.Until(deadline))
	}
	pending := len(sp.Streams) - next
	for _, s := range ph.conns {
		if s != nil && !s.readied {
			pending++
			ph.drop(s)
		}
	}
	if pending > 0 {
		res.ConnectErrors = append(res.ConnectErrors, fmt.Sprintf("%d streams not ready within %g s", pending, sp.ConnectTimeout))
	}
	streams := slices.DeleteFunc(slices.Clone(ph.ready), func(s *stream) bool { return !s.open })
	res.ConnectSeconds = math.Round(time.Since(began).Seconds()*1000) / 1000
	res.Connected = len(streams)
	return streams
}

// sendAll is loadgen._send_all: every frame of every stream on its schedule, in due order. Between
// frames the loop waits in epoll_wait (reading acks) until the next frame is due within `early`.
func (ph *phase) sendAll(streams []*stream, t0 time.Time, t0Ref float64) []float64 {
	sp, res := ph.spec, ph.res
	order := slices.Clone(streams)
	slices.SortStableFunc(order, func(a, b *stream) int { return cmp.Compare(a.offset, b.offset) })
	lateness := make([]float64, 0, len(streams)*max(0, sp.Frames-sp.WarmupFrames))
	var first, last time.Time
	inRow := 0
	for k := range sp.Frames {
		baseK := t0.Add(seconds(float64(k) * sp.Period))
		for _, s := range order {
			due := baseK.Add(s.offset)
			now := time.Now()
			if inRow == burst { // read what has come before sending on
				ph.poll(0)
				inRow, now = 0, time.Now()
			}
			for wait := due.Sub(now); wait > early; wait = due.Sub(now) {
				ph.poll(wait - early)
				inRow, now = 0, time.Now()
			}
			res.FramesScheduled++
			if !s.open {
				continue
			}
			inRow++
			if err := s.sendFrame(k, now.Sub(ph.base)); err != nil {
				s.open = false
				ph.addError("stream %d: write: %v", s.spec.Index, err)
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

// closeAll closes every connection of the phase.
func (ph *phase) closeAll() {
	for _, s := range ph.conns {
		if s != nil {
			ph.drop(s)
		}
	}
}

// run is loadgen.run_phase: connect, report, wait for go, send, collect, end.
func (ph *phase) run() (quit bool) {
	sp, res := ph.spec, ph.res
	defer ph.closeAll()
	streams := ph.connectAll()
	emit(map[string]any{"event": "connected", "connected": res.Connected, "connect_errors": nonNil(res.ConnectErrors),
		"connect_seconds": res.ConnectSeconds})
	var cmd command
	goBy := time.Now().Add(seconds(sp.GoTimeout))
	line, ok := ph.lines.next()
	for !ok && !ph.lines.eof && time.Now().Before(goBy) {
		if ph.lines.polled {
			ph.poll(time.Until(goBy)) // the connections are served meanwhile
		} else {
			ph.lines.fill()
		}
		line, ok = ph.lines.next()
	}
	if !ok {
		quit = ph.lines.eof
	} else if err := json.Unmarshal([]byte(line), &cmd); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: bad command %q: %v\n", line, err)
	}
	if cmd.Cmd != "go" {
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
	lateness := ph.sendAll(streams, t0, t0Ref)

	// the last echoes: until every counted frame is back, or the tail time is over
	tail := time.Now().Add(seconds(sp.TailSeconds))
	for ph.echoes < res.FramesCounted && time.Now().Before(tail) {
		ph.poll(time.Until(tail))
	}
	// a counted frame still without its echo took at least until now: it enters at that lower bound (censored)
	end := time.Since(ph.base)
	var rtts []float64
	for _, s := range streams {
		s.done = true
		res.EchoesCounted += len(s.rtts)
		rtts = append(rtts, s.rtts...)
		for seq := sp.WarmupFrames; seq < sp.Frames; seq++ {
			if s.sent[seq] != 0 && !s.echoed[seq] {
				rtts = append(rtts, (end - s.sent[seq]).Seconds())
				res.Censored++
			}
		}
	}
	writeFloats(sp.RttFile, rtts)
	writeFloats(sp.LatenessFile, lateness)

	// end every session and wait for the closing handshakes (bounded): until the servers close TCP
	for _, s := range streams {
		s.Write(wsframe.ClientFrame(wsframe.OpText, []byte(endMsg), s.mask[:]))
	}
	closeBy := time.Now().Add(seconds(sp.CloseTimeout))
	for slices.ContainsFunc(streams, func(s *stream) bool { return !s.Closed }) && time.Now().Before(closeBy) {
		ph.poll(time.Until(closeBy))
	}
	for _, s := range streams {
		if s.gotEnd && s.closeCode == 1000 {
			res.EndedClean++
		}
	}
	res.StreamErrors = ph.cappedErrors()
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

// lineReader reads the parent's commands from stdin (fd 0), one a line; polled: fd 0 is in the
// loop's epoll set, so a phase can wait for `go` while it serves its connections.
type lineReader struct {
	buf    []byte
	chunk  []byte
	eof    bool
	polled bool
	poller *evloop.Poller
}

// next is the next whole line, if one came.
func (r *lineReader) next() (string, bool) {
	i := bytes.IndexByte(r.buf, '\n')
	if i < 0 {
		return "", false
	}
	line := string(r.buf[:i])
	r.buf = r.buf[:copy(r.buf, r.buf[i+1:])]
	return line, true
}

// fill reads stdin once (blocking when fd 0 is not polled, and never when it is: epoll said it is readable).
func (r *lineReader) fill() {
	n, err := syscall.Read(0, r.chunk)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		return
	}
	if n <= 0 {
		r.eof = true
		if r.polled {
			r.poller.Del(0) // at its end a pipe is readable for ever
			r.polled = false
		}
		return
	}
	r.buf = append(r.buf, r.chunk[:n]...)
	if len(r.buf) > lineMaxSize {
		fmt.Fprintln(os.Stderr, "loadgen: command line too long")
		os.Exit(1)
	}
}

func main() {
	worker := flag.Int("worker", 0, "this worker's number (reported back)")
	flag.Parse()
	runtime.LockOSThread()
	poller, err := evloop.NewPoller()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	lines := &lineReader{chunk: make([]byte, 1<<20), poller: poller}
	lines.polled = poller.Add(0, false) == nil // not for a regular file
	buf := make([]byte, evloop.ReadBytes)
	for {
		line, ok := lines.next()
		if !ok {
			if lines.eof {
				return
			}
			lines.fill()
			continue
		}
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
		res := &result{Event: "result", Worker: *worker, Streams: len(spec.Streams)}
		ph := &phase{spec: spec, base: time.Now(), audio: makeAudio(spec.AudioBytes), poller: poller, lines: lines,
			buf: buf, addrs: map[string]syscall.Sockaddr{}, res: res}
		quit := ph.run()
		res.ConnectErrors, res.StreamErrors = nonNil(res.ConnectErrors), nonNil(res.StreamErrors)
		emit(res)
		if quit {
			return
		}
	}
}
