package cnm

import "golang.org/x/sys/unix"

// closeFD closes a file descriptor that osl handed out ([osl.Namespace.FD]).
func closeFD(fd int) error { return unix.Close(fd) }
