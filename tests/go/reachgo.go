// reachgo: a small Go program for dropshim's tests of programs that make
// their socket system calls without libc (Go's runtime does).
//
//	reachgo get URL OUT     download URL into the file OUT
//	reachgo serve ADDR DIR  serve the files of DIR over HTTP on ADDR
//	reachgo dial ADDR -     connect to ADDR, print both ends' addresses
//	reachgo keepalive ADDR FILE
//	                        connect to ADDR with SO_KEEPALIVE, TCP_KEEPIDLE 1
//	                        and TCP_KEEPINTVL 1 set before connect (net.Dialer's
//	                        Control), send FILE, then wait until the peer closes
//	reachgo listen6 ADDR OUT
//	                        with raw system calls: an AF_INET6 socket bound to
//	                        ADDR ("[IPV6]:PORT", an IPv4-mapped address too),
//	                        one accepted connection read to its end into OUT
//	reachgo nbconnect ADDR FILE
//	                        with raw system calls: a non-blocking IPv4 connect
//	                        to ADDR, registered in epoll (edge-triggered) after
//	                        connect returns, as Go's runtime does; prints
//	                        connect's errno, SO_ERROR once writable and, when
//	                        connected, sends FILE, changes the registration
//	                        (EPOLL_CTL_MOD) and prints the answer in hex
//	reachgo acceptget ADDR URL OUT
//	                        with raw system calls: an IPv4 listener on ADDR
//	                        and a thread blocked in accept() on it; meanwhile
//	                        downloads URL into OUT with net/http, then dials
//	                        ADDR and sends OUT; prints "got" after the
//	                        download and "accepted=SHA256" of the bytes the
//	                        blocked accept's connection carried
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// rawListen opens a socket of family (AF_INET or AF_INET6) listening on
// addr, with the system calls made directly.
func rawListen(family int, addr string) (int, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return -1, err
	}
	var sa syscall.Sockaddr
	if family == syscall.AF_INET6 {
		s6 := &syscall.SockaddrInet6{Port: ta.Port}
		copy(s6.Addr[:], ta.IP.To16())
		sa = s6
	} else {
		s4 := &syscall.SockaddrInet4{Port: ta.Port}
		copy(s4.Addr[:], ta.IP.To4())
		sa = s4
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM, 0)
	if err != nil {
		return -1, err
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", addr, err)
	}
	if err := syscall.Listen(fd, 4); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// acceptget blocks one thread in a raw accept() while the program's
// other goroutines download a file and then connect to that listener:
// nothing may wait for the accept to end.
func acceptget(addr, url, out string) error {
	fd, err := rawListen(syscall.AF_INET, addr)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	tids := make(chan int, 1)
	accepted := make(chan string, 1)
	go func() {
		runtime.LockOSThread()
		tids <- syscall.Gettid()
		var conn int
		var err error
		for {
			conn, _, err = syscall.Accept(fd)
			if err != syscall.EINTR {
				break
			}
		}
		if err != nil {
			accepted <- "error " + err.Error()
			return
		}
		defer syscall.Close(conn)
		h := sha256.New()
		buf := make([]byte, 65536)
		for {
			n, err := syscall.Read(conn, buf)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				accepted <- "error " + err.Error()
				return
			}
			if n == 0 {
				break
			}
			h.Write(buf[:n])
		}
		accepted <- hex.EncodeToString(h.Sum(nil))
	}()
	// Wait until that thread is in accept (accept4: 288, accept: 43 on
	// x86_64; /proc shows the call a blocked thread is in).
	tid := <-tids
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/syscall", tid))
		nr := strings.Fields(string(b) + " x")[0]
		if nr == "288" || nr == "43" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the accepting thread never blocked in accept (%q)", string(b))
		}
		time.Sleep(time.Millisecond)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return fmt.Errorf("download while accept() blocks: %w", err)
	}
	f, err := os.Create(out)
	if err != nil {
		resp.Body.Close()
		return err
	}
	_, err = io.Copy(f, resp.Body)
	resp.Body.Close()
	if err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Println("got")
	data, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp4", addr, 30*time.Second)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	if _, err := c.Write(data); err != nil {
		c.Close()
		return err
	}
	c.Close()
	select {
	case sum := <-accepted:
		fmt.Printf("accepted=%s\n", sum)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("the blocked accept never returned")
	}
	return nil
}

// keepalive connects with keepalive options set before connect(), as a
// program tuning its socket does, and sends the file.
func keepalive(addr, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	d := net.Dialer{
		// Go's own keepalive is set after connect; only Control's counts.
		KeepAlive: -1,
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				for _, o := range [][3]int{
					{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 1},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 1},
				} {
					if e := syscall.SetsockoptInt(int(fd), o[0], o[1], o[2]); e != nil {
						serr = e
					}
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(data); err != nil {
		return err
	}
	fmt.Println("sent")
	_, err = io.Copy(io.Discard, c)
	return err
}

// listen6 serves one connection on an AF_INET6 socket bound to addr,
// with the system calls made directly (Go's net package would open an
// AF_INET socket for an IPv4-mapped address).
func listen6(addr, out string) error {
	fd, err := rawListen(syscall.AF_INET6, addr)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	conn, _, err := syscall.Accept(fd)
	if err != nil {
		return err
	}
	defer syscall.Close(conn)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	buf := make([]byte, 65536)
	for {
		n, err := syscall.Read(conn, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			f.Close()
			return err
		}
		if n == 0 {
			break
		}
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func get(url, out string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func errname(err error) string {
	if err == nil {
		return "0"
	}
	if e, ok := err.(syscall.Errno); ok {
		switch e {
		case syscall.EINPROGRESS:
			return "EINPROGRESS"
		case syscall.ECONNREFUSED:
			return "ECONNREFUSED"
		case 0:
			return "0"
		}
		return fmt.Sprintf("errno%d", int(e))
	}
	return err.Error()
}

// waitFor waits (10 s at most) for an edge-triggered event in mask on
// the epoll set ep.
func waitFor(ep int, mask uint32) error {
	events := make([]syscall.EpollEvent, 4)
	for {
		n, err := syscall.EpollWait(ep, events, 10000)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("no epoll event within 10 s")
		}
		for _, e := range events[:n] {
			if e.Events&mask != 0 {
				return nil
			}
		}
	}
}

// nbconnect connects without blocking, the way event loops do, and
// reports what a kernel socket would tell.
func nbconnect(addr, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	ta, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return err
	}
	sa := &syscall.SockaddrInet4{Port: ta.Port}
	copy(sa.Addr[:], ta.IP.To4())
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	cerr := syscall.Connect(fd, sa)
	fmt.Printf("connect=%s\n", errname(cerr))
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer syscall.Close(ep)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | 1<<31, Fd: int32(fd)}
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return err
	}
	if err := waitFor(ep, syscall.EPOLLOUT); err != nil {
		return fmt.Errorf("waiting for writable: %w", err)
	}
	soerr, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
	if err != nil {
		return err
	}
	fmt.Printf("so_error=%s\n", errname(syscall.Errno(soerr)))
	if soerr != 0 {
		return nil
	}
	if _, err := syscall.Getpeername(fd); err != nil {
		return fmt.Errorf("getpeername once connected: %w", err)
	}
	for len(data) > 0 {
		n, err := syscall.Write(fd, data)
		if err == syscall.EAGAIN {
			if err := waitFor(ep, syscall.EPOLLOUT); err != nil {
				return err
			}
			continue
		}
		if err != nil && err != syscall.EINTR {
			return err
		}
		if n > 0 {
			data = data[n:]
		}
	}
	if err := syscall.Shutdown(fd, syscall.SHUT_WR); err != nil {
		return err
	}
	// The registration still answers to this descriptor's number.
	ev.Events = syscall.EPOLLIN | syscall.EPOLLRDHUP | 1<<31
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return fmt.Errorf("EPOLL_CTL_MOD once connected: %w", err)
	}
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EAGAIN {
			// Only the epoll registration made before connect ended can
			// say when the answer comes.
			if err := waitFor(ep, syscall.EPOLLIN|syscall.EPOLLRDHUP); err != nil {
				return fmt.Errorf("waiting for the answer: %w", err)
			}
			continue
		}
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		got = append(got, buf[:n]...)
	}
	fmt.Printf("answer=%s\n", hex.EncodeToString(got))
	return nil
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "acceptget" {
		if err := acceptget(os.Args[2], os.Args[3], os.Args[4]); err != nil {
			fmt.Fprintln(os.Stderr, "reachgo:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: reachgo get URL OUT | reachgo serve ADDR DIR | reachgo dial ADDR - | reachgo keepalive ADDR FILE | reachgo listen6 ADDR OUT | reachgo nbconnect ADDR FILE | reachgo acceptget ADDR URL OUT")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "get":
		err = get(os.Args[2], os.Args[3])
	case "dial":
		var c net.Conn
		c, err = net.Dial("tcp", os.Args[2])
		if err == nil {
			fmt.Printf("local=%s remote=%s\n", c.LocalAddr(), c.RemoteAddr())
			c.Close()
		}
	case "keepalive":
		err = keepalive(os.Args[2], os.Args[3])
	case "nbconnect":
		err = nbconnect(os.Args[2], os.Args[3])
	case "listen6":
		err = listen6(os.Args[2], os.Args[3])
	case "serve":
		err = http.ListenAndServe(os.Args[2], http.FileServer(http.Dir(os.Args[3])))
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "reachgo:", err)
		os.Exit(1)
	}
}
