// reachgo: a small Go program for dropshim's tests of programs that make
// their socket system calls without libc (Go's runtime does).
//
//	reachgo get URL OUT     download URL into the file OUT
//	reachgo serve ADDR DIR  serve the files of DIR over HTTP on ADDR
//	reachgo dial ADDR -     connect to ADDR, print both ends' addresses
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

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
		fmt.Fprintln(os.Stderr, "usage: reachgo get URL OUT | reachgo serve ADDR DIR | reachgo dial ADDR -")
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
