package pollmode

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// MaxCPUs bounds every CPU and lcore id this package accepts: ids are in
// [0, MaxCPUs). It is glibc's CPU_SETSIZE, the size of unix.CPUSet and the
// bound DPDK's --lcores parser (eal_parse_set) applies to both lcore and CPU
// ids. DPDK's -l parser is bounded by RTE_MAX_LCORE instead (a build option,
// 128 by default); zcnet has no per-lcore tables of fixed size, so the only
// real limit is what sched_setaffinity can express through unix.CPUSet.
const MaxCPUs = 1024

// ErrInvalidCoreList is wrapped by every error ParseCoreList and ParseLcores
// return, so callers can tell a user's typo from a system failure.
var ErrInvalidCoreList = errors.New("pollmode: invalid core list")

// ParseCoreList parses a core list in the syntax of DPDK's EAL option
// -l/--corelist (eal_parse_corelist in lib/eal/common/eal_common_options.c):
// comma-separated items, each a decimal CPU number "N" or an inclusive range
// "N-M", with blanks (spaces, tabs) allowed around numbers and separators.
// Duplicates and overlapping ranges are merged, as DPDK does. The result is
// sorted and free of duplicates.
//
// Where DPDK's C parser accepts input only by accident, this parser refuses
// it with an error naming the token, because the operator almost certainly
// meant something else:
//   - a reversed range "5-3": DPDK's loop runs from 5 up to 3, adds nothing,
//     and fails only if the whole list ends up empty ("1,5-3" silently means
//     "1"); here it is an error suggesting "3-5". (DPDK's --lcores parser, by
//     contrast, swaps the bounds; ParseLcores follows it there.)
//   - an empty item (",1", "1,,2", "1,"): strtol reads nothing as 0, so DPDK
//     takes ",1" as "0,1".
//   - a chained range "1-3-5": DPDK restarts the range at 3 and drops 1-2.
//   - a sign ("+3"): strtol accepts it; nobody writes it on purpose.
//
// Ids at or above MaxCPUs are refused.
func ParseCoreList(s string) ([]int, error) {
	if trimBlanks(s) == "" {
		return nil, fmt.Errorf("%w: empty: give CPU numbers like \"0-3,8\"", ErrInvalidCoreList)
	}
	var set cpuBitmap
	for i, item := range strings.Split(s, ",") {
		tok := trimBlanks(item)
		if tok == "" {
			return nil, fmt.Errorf("%w %q: item %d is empty (stray comma?)", ErrInvalidCoreList, s, i+1)
		}
		lo, hi, err := parseCoreRange(tok)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", ErrInvalidCoreList, s, err)
		}
		if lo > hi {
			return nil, fmt.Errorf("%w %q: range %q is reversed: write \"%d-%d\"", ErrInvalidCoreList, s, tok, hi, lo)
		}
		set.addRange(lo, hi)
	}
	return set.list(), nil
}

// parseCoreRange parses one -l item, "N" or "N-M", already trimmed.
func parseCoreRange(tok string) (lo, hi int, err error) {
	first, second, isRange := strings.Cut(tok, "-")
	if lo, err = parseCPUNumber(tok, first); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return lo, lo, nil
	}
	if strings.Contains(second, "-") {
		return 0, 0, fmt.Errorf("item %q has more than one \"-\": a range is \"N-M\"", tok)
	}
	if hi, err = parseCPUNumber(tok, second); err != nil {
		return 0, 0, err
	}
	return lo, hi, nil
}

// parseCPUNumber parses one decimal id in [0, MaxCPUs). tok is the item it
// came from, for the error message.
func parseCPUNumber(tok, num string) (int, error) {
	num = trimBlanks(num)
	if num == "" {
		if strings.HasPrefix(tok, "-") {
			return 0, fmt.Errorf("item %q: CPU numbers cannot be negative", tok)
		}
		return 0, fmt.Errorf("item %q: missing number on one side of \"-\"", tok)
	}
	for _, c := range []byte(num) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("item %q: %q is not a decimal CPU number", tok, num)
		}
	}
	// Only digits: Atoi can fail only by overflow, which is out of range too.
	v, err := strconv.Atoi(num)
	if err != nil || v >= MaxCPUs {
		return 0, fmt.Errorf("item %q: CPU %s is out of range: ids go from 0 to %d", tok, num, MaxCPUs-1)
	}
	return v, nil
}

// trimBlanks removes what C's isblank() skips in DPDK's parsers: spaces and
// tabs. Newlines and other white space stay and are refused as garbage.
func trimBlanks(s string) string {
	return strings.Trim(s, " \t")
}

// FormatCoreList renders CPU ids in the compact form ParseCoreList reads and
// Linux prints in /proc/<pid>/status Cpus_allowed_list: ascending, runs of
// two or more consecutive ids as "lo-hi", items separated by commas, e.g.
// "0-3,8". The input need not be sorted or unique. Ids should be in
// [0, MaxCPUs); anything else is printed as is, so the mistake stays visible.
func FormatCoreList(cpus []int) string {
	ids := slices.Clone(cpus)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var b strings.Builder
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(ids[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(ids[j]))
		}
		i = j + 1
	}
	return b.String()
}

// LcoreCPUs is one lcore of an --lcores specification and the CPUs its
// thread may run on.
type LcoreCPUs struct {
	Lcore int
	CPUs  []int // sorted, unique, never empty
}

// ParseLcores parses DPDK's --lcores syntax (eal_parse_lcores and
// eal_parse_set in lib/eal/common/eal_common_options.c):
//
//	list  = elem { "," elem }
//	elem  = set [ "@" set ]
//	set   = N | N "-" M | "(" item { "," item } ")"
//	item  = N | N "-" M
//
// with blanks allowed around every token. "lcores@cpus" runs every lcore of
// the left set on the whole right set: "(0-3)@1" puts lcores 0-3 all on CPU 1,
// "1@2" puts lcore 1 on CPU 2, "(4,5)@(6,7)" lets lcores 4 and 5 float over
// CPUs 6 and 7. Without "@", a number or plain range maps each lcore to the
// CPU of the same number ("7-8" is lcore 7 on CPU 7 and lcore 8 on CPU 8), and
// a group maps each of its lcores to the whole group ("(0,6)" is lcores 0 and
// 6, each on CPUs {0,6}). As in DPDK, a range written backwards is swapped
// ("5-3" is 3-5) and a plain range cannot take "@" ("0-3@1" must be written
// "(0-3)@1"). The result is sorted by lcore id.
//
// Unlike DPDK, which silently lets a later element override an earlier one,
// naming the same lcore twice is an error.
func ParseLcores(s string) ([]LcoreCPUs, error) {
	p := lcoreParser{s: s}
	out, err := p.parse()
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrInvalidCoreList, s, err)
	}
	return out, nil
}

type lcoreParser struct {
	s   string
	pos int
}

func (p *lcoreParser) parse() ([]LcoreCPUs, error) {
	p.skipBlanks()
	if p.pos == len(p.s) {
		return nil, errors.New("empty: give lcores like \"0-3\" or \"(0-3)@1\"")
	}
	cpusOf := make(map[int]*cpuBitmap)
	for {
		start := p.pos
		if err := p.parseElem(cpusOf); err != nil {
			return nil, fmt.Errorf("element %q: %w", p.elemText(start), err)
		}
		if p.pos == len(p.s) {
			break
		}
		// parseElem stops only at the end or at a top-level comma.
		p.pos++
		p.skipBlanks()
		if p.pos == len(p.s) {
			return nil, errors.New("trailing comma")
		}
	}
	out := make([]LcoreCPUs, 0, len(cpusOf))
	for lcore, cpus := range cpusOf {
		out = append(out, LcoreCPUs{Lcore: lcore, CPUs: cpus.list()})
	}
	slices.SortFunc(out, func(a, b LcoreCPUs) int { return a.Lcore - b.Lcore })
	return out, nil
}

// elemText is the element that starts at start, for error messages: up to
// the next top-level comma.
func (p *lcoreParser) elemText(start int) string {
	depth := 0
	for i := start; i < len(p.s); i++ {
		switch p.s[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth <= 0 {
				return trimBlanks(p.s[start:i])
			}
		}
	}
	return trimBlanks(p.s[start:])
}

func (p *lcoreParser) parseElem(cpusOf map[int]*cpuBitmap) error {
	lcores, kind, err := p.parseSet()
	if err != nil {
		return err
	}
	var explicit *cpuBitmap
	if p.peek() == '@' {
		if kind == setRange {
			return errors.New("a range of lcores needs parentheses before \"@\", like \"(0-3)@1\"")
		}
		p.pos++
		cpus, _, err := p.parseSet()
		if err != nil {
			return fmt.Errorf("CPU set after \"@\": %w", err)
		}
		explicit = &cpus
	}
	if c := p.peek(); c != 0 && c != ',' {
		return fmt.Errorf("unexpected %q at offset %d", c, p.pos)
	}
	for _, lcore := range lcores.list() {
		if _, dup := cpusOf[lcore]; dup {
			return fmt.Errorf("lcore %d is assigned more than once", lcore)
		}
		cpus := new(cpuBitmap)
		switch {
		case explicit != nil:
			*cpus = *explicit
		case kind == setGroup:
			*cpus = lcores
		default:
			cpus.addRange(lcore, lcore)
		}
		cpusOf[lcore] = cpus
	}
	return nil
}

// setKind tells how a set was written, which decides how lcores without
// "@" map to CPUs and whether "@" may follow.
type setKind int

const (
	setSingle setKind = iota // "N"
	setRange                 // "N-M"
	setGroup                 // "( ... )"
)

// parseSet reads "N", "N-M" or "( item, ... )" and reports which it was. It
// leaves p after trailing blanks.
func (p *lcoreParser) parseSet() (set cpuBitmap, kind setKind, err error) {
	p.skipBlanks()
	if p.peek() != '(' {
		start := p.pos
		lo, hi, err := p.parseRange()
		if err != nil {
			return set, setSingle, err
		}
		set.addRange(lo, hi)
		if strings.Contains(p.s[start:p.pos], "-") {
			return set, setRange, nil
		}
		return set, setSingle, nil
	}
	p.pos++
	for {
		lo, hi, err := p.parseRange()
		if err != nil {
			return set, setGroup, err
		}
		set.addRange(lo, hi)
		switch p.peek() {
		case ',':
			p.pos++
		case ')':
			p.pos++
			p.skipBlanks()
			return set, setGroup, nil
		case 0:
			return set, setGroup, errors.New("missing \")\"")
		default:
			return set, setGroup, fmt.Errorf("unexpected %q at offset %d inside parentheses", p.peek(), p.pos)
		}
	}
}

// parseRange reads "N" or "N-M" (bounds in either order, as DPDK allows
// here) and returns them ascending.
func (p *lcoreParser) parseRange() (lo, hi int, err error) {
	if lo, err = p.parseNumber(); err != nil {
		return 0, 0, err
	}
	hi = lo
	if p.peek() == '-' {
		p.pos++
		if hi, err = p.parseNumber(); err != nil {
			return 0, 0, err
		}
		if p.peek() == '-' {
			return 0, 0, errors.New("more than one \"-\" in a range")
		}
	}
	return min(lo, hi), max(lo, hi), nil
}

// parseNumber reads a decimal id in [0, MaxCPUs) with blanks around it.
func (p *lcoreParser) parseNumber() (int, error) {
	p.skipBlanks()
	start := p.pos
	for p.pos < len(p.s) && p.s[p.pos] >= '0' && p.s[p.pos] <= '9' {
		p.pos++
	}
	if start == p.pos {
		if p.pos == len(p.s) {
			return 0, errors.New("missing number at end of input")
		}
		return 0, fmt.Errorf("expected a number at offset %d, found %q", p.pos, p.s[p.pos])
	}
	num := p.s[start:p.pos]
	p.skipBlanks()
	v, err := strconv.Atoi(num)
	if err != nil || v >= MaxCPUs {
		return 0, fmt.Errorf("%s is out of range: ids go from 0 to %d", num, MaxCPUs-1)
	}
	return v, nil
}

// peek returns the byte at the cursor, or 0 at the end of input.
func (p *lcoreParser) peek() byte {
	if p.pos < len(p.s) {
		return p.s[p.pos]
	}
	return 0
}

func (p *lcoreParser) skipBlanks() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

// cpuBitmap is a set of ids in [0, MaxCPUs). Unlike a map or a sorted slice
// it makes merging ranges and listing them in order trivial.
type cpuBitmap [MaxCPUs / 64]uint64

func (b *cpuBitmap) addRange(lo, hi int) {
	for i := lo; i <= hi; i++ {
		b[i/64] |= 1 << (i % 64)
	}
}

func (b *cpuBitmap) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

func (b *cpuBitmap) list() []int {
	out := make([]int, 0, b.count())
	for wi, w := range b {
		for w != 0 {
			out = append(out, wi*64+bits.TrailingZeros64(w))
			w &= w - 1
		}
	}
	return out
}

// PollCPUs turns a core list into CPUs for lcores; an empty list means the
// last CPU the process may run on (CPU 0 usually takes the kernel's
// housekeeping).
func PollCPUs(list string) ([]int, error) {
	if list != "" {
		return ParseCoreList(list)
	}
	allowed, err := AllowedCPUs()
	if err != nil {
		return nil, err
	}
	return allowed[len(allowed)-1:], nil
}
