package cnm

import (
	"fmt"
	"regexp"
	"strings"
)

// maxNameLen bounds network, endpoint and container names.
const maxNameLen = 128

// namePattern is Docker's rule for object names.
var namePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// validateName checks a user-given name; field names it in the error.
func validateName(field, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, field)
	case len(name) > maxNameLen:
		return fmt.Errorf("%w: %s %.20q... is %d characters long, more than %d", ErrInvalid, field, name, len(name), maxNameLen)
	case !namePattern.MatchString(name):
		return fmt.Errorf("%w: %s %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", ErrInvalid, field, name)
	}
	return nil
}

// validDNSName checks a name that service discovery answers (an endpoint's
// name, an alias) beyond validateName: each dot-separated label 1 to 63
// characters, as DNS allows.
func validDNSName(field, name string) error {
	if err := validateName(field, name); err != nil {
		return err
	}
	for _, label := range strings.Split(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("%w: %s %q: a DNS label must be 1 to 63 characters long, not %d", ErrInvalid, field, name, len(label))
		}
	}
	return nil
}
