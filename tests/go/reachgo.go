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
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
)

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
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return err
	}
	sa := &syscall.SockaddrInet6{Port: ta.Port}
	copy(sa.Addr[:], ta.IP.To16())
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := syscall.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind %s: %w", addr, err)
	}
	if err := syscall.Listen(fd, 4); err != nil {
		return err
	}
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

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: reachgo get URL OUT | reachgo serve ADDR DIR | reachgo dial ADDR - | reachgo keepalive ADDR FILE | reachgo listen6 ADDR OUT")
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
