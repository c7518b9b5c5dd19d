// Package evloop is the event loop of the Go router-benchmark harness
// (cmd/standin, cmd/loadgen): one epoll instance, level-triggered, and
// non-blocking sockets driven by plain system calls, all on one thread.
//
// Why not the net package: the harness shares a 2-core machine with the
// proxy it measures and must leave it the CPU. With a goroutine per
// connection every message cost a goroutine wake-up, a read that ended in
// EAGAIN and Go scheduler hand-offs between threads (about 60k context
// switches a second at 1000 streams), so the stand-ins and the generator
// took 0.85-0.9 cores. Here one epoll_wait serves every ready socket, each
// readiness costs one read and each message one write.
//
// The loop makes its system calls raw (no entersyscall): with GOMAXPROCS=1 a
// goroutine blocked in syscall.EpollWait lets the runtime's sysmon take the
// only P away and start a spinning thread for it, a futex wake-up and a
// thread hand-off per wait (20-37% of the harness's CPU in a perf profile
// at 1000 streams). Raw, the loop thread keeps its P; sysmon preempts it
// every 10 ms with a signal (epoll_wait returns EINTR), which lets the signal
// handler and the garbage collector in. The reads and writes are on
// non-blocking sockets and never block.
package evloop

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// ReadBytes is the size of a loop's shared read buffer: one read per readiness takes up to this much.
const ReadBytes = 256 * 1024

const (
	in  = syscall.EPOLLIN | syscall.EPOLLRDHUP
	out = syscall.EPOLLOUT
)

// Poller is an epoll instance.
type Poller struct {
	fd     int
	events []syscall.EpollEvent
}

// NewPoller is a new epoll instance.
func NewPoller() (*Poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &Poller{fd: fd, events: make([]syscall.EpollEvent, 1024)}, nil
}

// Add watches fd for input, and for output too when writable is set.
func (p *Poller) Add(fd int, writable bool) error { return p.ctl(syscall.EPOLL_CTL_ADD, fd, writable) }

// Mod changes what fd is watched for.
func (p *Poller) Mod(fd int, writable bool) error { return p.ctl(syscall.EPOLL_CTL_MOD, fd, writable) }

// Del stops watching fd.
func (p *Poller) Del(fd int) error {
	return syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_DEL, fd, &syscall.EpollEvent{})
}

func (p *Poller) ctl(op, fd int, writable bool) error {
	ev := syscall.EpollEvent{Events: in, Fd: int32(fd)}
	if writable {
		ev.Events |= out
	}
	return syscall.EpollCtl(p.fd, op, fd, &ev)
}

// Wait is the ready fds, waiting at most timeout (negative: no limit; rounded up to whole milliseconds).
func (p *Poller) Wait(timeout time.Duration) []syscall.EpollEvent {
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(p.fd), uintptr(unsafe.Pointer(&p.events[0])),
		uintptr(len(p.events)), uintptr(ms), 0, 0)
	if errno != 0 { // EINTR: a signal
		return nil
	}
	return p.events[:n]
}

// Read is syscall.Read, raw: for non-blocking fds only.
func Read(fd int, b []byte) (int, error) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}

// Write is syscall.Write, raw: for non-blocking fds only.
func Write(fd int, b []byte) (int, error) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}

// Readable is whether the event reports input (or a hang-up or an error, which a read reports).
func Readable(ev syscall.EpollEvent) bool {
	return ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0
}

// Writable is whether the event reports room for output.
func Writable(ev syscall.EpollEvent) bool { return ev.Events&syscall.EPOLLOUT != 0 }

// Conn is a non-blocking socket on a Poller: the input kept from a read that
// ended inside a message, and the output the socket has not taken yet.
type Conn struct {
	Fd     int
	Closed bool
	poller *Poller
	in     []byte
	out    []byte
}

// Attach makes c the connection of fd, watched by p (for output too when writable is set).
func (c *Conn) Attach(p *Poller, fd int, writable bool) error {
	c.Fd, c.poller = fd, p
	return p.Add(fd, writable)
}

// Read reads once into buf (the loop's shared buffer) and returns what came behind the bytes kept
// by Keep. It returns io.EOF when the peer has closed, and (nil, nil) when there is nothing to read.
func (c *Conn) Read(buf []byte) ([]byte, error) {
	n, err := Read(c.Fd, buf)
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR:
		return nil, nil
	case err != nil:
		return nil, err
	case n == 0:
		return nil, io.EOF
	case len(c.in) == 0:
		return buf[:n], nil
	}
	c.in = append(c.in, buf[:n]...)
	return c.in, nil
}

// Keep keeps rest, the unparsed end of what Read returned, for the next Read.
func (c *Conn) Keep(rest []byte) {
	c.in = append(c.in[:0], rest...) // rest may lie in c.in: append moves it like copy
}

// Write writes b at once if the socket takes it; what it does not take waits, in order, with
// EPOLLOUT on, for Flush. b may be reused when Write returns.
func (c *Conn) Write(b []byte) error {
	if c.Closed {
		return net.ErrClosed
	}
	if len(c.out) > 0 {
		c.out = append(c.out, b...)
		return nil
	}
	n, err := Write(c.Fd, b)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		n, err = 0, nil
	}
	if err != nil {
		return err
	}
	if n < len(b) {
		c.out = append(c.out, b[n:]...)
		return c.poller.Mod(c.Fd, true)
	}
	return nil
}

// Flush writes what waits (on EPOLLOUT); EPOLLOUT goes off once nothing does.
func (c *Conn) Flush() error {
	if len(c.out) == 0 {
		return c.poller.Mod(c.Fd, false)
	}
	n, err := Write(c.Fd, c.out)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		return nil
	}
	if err != nil {
		return err
	}
	c.out = c.out[:copy(c.out, c.out[n:])]
	if len(c.out) == 0 {
		return c.poller.Mod(c.Fd, false)
	}
	return nil
}

// Pending is whether output waits for the socket.
func (c *Conn) Pending() bool { return len(c.out) > 0 }

// Close closes the socket (closing removes it from the epoll set); later calls do nothing.
func (c *Conn) Close() {
	if !c.Closed {
		c.Closed = true
		syscall.Close(c.Fd)
		c.in, c.out = nil, nil
	}
}

// Sockaddr is the address of host:port (an IP address or a name; IPv4 first).
func Sockaddr(host string, port int) (syscall.Sockaddr, int, error) {
	ips, err := net.LookupIP(host)
	if err != nil {
		return nil, 0, err
	}
	for _, ip := range ips {
		if ip4 := ip.To4(); ip4 != nil {
			sa := &syscall.SockaddrInet4{Port: port}
			copy(sa.Addr[:], ip4)
			return sa, syscall.AF_INET, nil
		}
	}
	for _, ip := range ips {
		sa := &syscall.SockaddrInet6{Port: port}
		copy(sa.Addr[:], ip.To16())
		return sa, syscall.AF_INET6, nil
	}
	return nil, 0, errors.New("no address for " + host)
}

// Socket is a new non-blocking TCP socket with TCP_NODELAY.
func Socket(family int) (int, error) {
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	NoDelay(fd)
	return fd, nil
}

// NoDelay sets TCP_NODELAY (as the net package does on every TCP connection).
func NoDelay(fd int) {
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
}

// Listen is a non-blocking listening socket on host:port.
func Listen(host string, port int) (int, error) {
	sa, family, err := Sockaddr(host, port)
	if err != nil {
		return -1, err
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err = syscall.Bind(fd, sa); err == nil {
		err = syscall.Listen(fd, 4096)
	}
	if err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}
