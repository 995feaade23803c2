package pollmode

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestParseCoreList(t *testing.T) {
	tests := []struct {
		in   string
		want []int
	}{
		{"0-3,8", []int{0, 1, 2, 3, 8}},
		{"2,4-5", []int{2, 4, 5}},
		{"7", []int{7}},
		{"0", []int{0}},
		{"8,0-3", []int{0, 1, 2, 3, 8}},         // order of items does not matter
		{"1,1,1", []int{1}},                     // duplicates merge
		{"0-4,2-6", []int{0, 1, 2, 3, 4, 5, 6}}, // overlapping ranges merge
		{"3-3", []int{3}},
		{" 0 - 2 ,\t5 ", []int{0, 1, 2, 5}}, // blanks around tokens, as isblank() in DPDK
		{"007", []int{7}},                   // strtol reads leading zeros as decimal
		{"1023", []int{MaxCPUs - 1}},
		{"1022-1023", []int{1022, 1023}},
	}
	for _, tt := range tests {
		got, err := ParseCoreList(tt.in)
		if err != nil {
			t.Errorf("ParseCoreList(%q): %v", tt.in, err)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("ParseCoreList(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseCoreListErrors(t *testing.T) {
	tests := []struct {
		in      string
		mention string // the offending token or reason the error must name
	}{
		{"", "empty"},
		{" \t ", "empty"},
		{"5-3", `"3-5"`}, // reversed: suggest the right order
		{"1,5-3", `"5-3"`},
		{"-1", `"-1"`},
		{"0,-2", "negative"},
		{"a", `"a"`},
		{"0-3,x", `"x"`},
		{"1-b", `"b"`},
		{"+3", `"+3"`},
		{"0x3", `"0x3"`},
		{"1,", "item 2 is empty"},
		{",1", "item 1 is empty"},
		{"1,,2", "item 2 is empty"},
		{"1-", "missing number"},
		{"1-2-3", `"1-2-3"`},
		{"1024", "out of range"},
		{"0-4096", "4096"},
		{"99999999999999999999999", "out of range"},
		{"1\n", `"1\n"`}, // only blanks are trimmed, as in DPDK
		{"1 2", `"1 2"`},
	}
	for _, tt := range tests {
		got, err := ParseCoreList(tt.in)
		checkParseError(t, fmt.Sprintf("ParseCoreList(%q) = %v", tt.in, got), err, tt.mention)
	}
}

// checkParseError fails unless err is a parse error that names mention.
// call describes the call and its result.
func checkParseError(t *testing.T, call string, err error, mention string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s, want an error", call)
	case !errors.Is(err, ErrInvalidCoreList):
		t.Errorf("%s: error %v does not wrap ErrInvalidCoreList", call, err)
	case !strings.Contains(err.Error(), mention):
		t.Errorf("%s: error %q does not mention %s", call, err, mention)
	}
}

func TestFormatCoreList(t *testing.T) {
	tests := []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{7}, "7"},
		{[]int{0, 1}, "0-1"}, // as Linux prints Cpus_allowed_list
		{[]int{0, 1, 2, 3, 8}, "0-3,8"},
		{[]int{8, 3, 2, 1, 0, 3}, "0-3,8"}, // unsorted, duplicated input
		{[]int{0, 2, 4}, "0,2,4"},
		{[]int{1, 2, 5, 6, 7, 9}, "1-2,5-7,9"},
	}
	for _, tt := range tests {
		if got := FormatCoreList(tt.in); got != tt.want {
			t.Errorf("FormatCoreList(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
	in := []int{3, 1, 2}
	FormatCoreList(in)
	if !slices.Equal(in, []int{3, 1, 2}) {
		t.Errorf("FormatCoreList modified its argument: %v", in)
	}
}

// TestCoreListRoundTripRandom checks parse(format(x)) == x on random sets,
// including dense ones that produce long ranges.
func TestCoreListRoundTripRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		density := rng.Float64()
		var want []int
		for c := 0; c < MaxCPUs; c++ {
			if rng.Float64() < density*density*0.2 {
				want = append(want, c)
			}
		}
		if len(want) == 0 {
			continue
		}
		s := FormatCoreList(want)
		got, err := ParseCoreList(s)
		if err != nil {
			t.Fatalf("ParseCoreList(FormatCoreList(%v) = %q): %v", want, s, err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round trip of %q: got %v, want %v", s, got, want)
		}
	}
}

func FuzzParseCoreList(f *testing.F) {
	for _, seed := range []string{"0-3,8", "2,4-5", "7", "5-3", " 1 , 2 - 4 ", "1,,2", "-1", "1023", "1024", "0-1023", "1-2-3", "+1"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := ParseCoreList(s)
		if !parsed(t, err) {
			return
		}
		checkIDs(t, fmt.Sprintf("ParseCoreList(%q)", s), cpus)
		formatted := FormatCoreList(cpus)
		again, err := ParseCoreList(formatted)
		if err != nil {
			t.Fatalf("ParseCoreList(FormatCoreList(%v) = %q): %v", cpus, formatted, err)
		}
		if !slices.Equal(again, cpus) {
			t.Fatalf("round trip %q -> %v -> %q -> %v", s, cpus, formatted, again)
		}
		if FormatCoreList(again) != formatted {
			t.Fatalf("formatting is not canonical: %q vs %q", FormatCoreList(again), formatted)
		}
	})
}

// lcoreMap renders a ParseLcores result compactly for comparisons:
// "0@0,6 1@1".
func lcoreMap(m []LcoreCPUs) string {
	parts := make([]string, len(m))
	for i, lc := range m {
		parts[i] = fmt.Sprintf("%d@%s", lc.Lcore, FormatCoreList(lc.CPUs))
	}
	return strings.Join(parts, " ")
}

func TestParseLcores(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"7", "7@7"},
		{"0-3", "0@0 1@1 2@2 3@3"}, // a plain range maps lcore i to CPU i
		{"1@2", "1@2"},
		{"(0-3)@1", "0@1 1@1 2@1 3@1"},
		{"(4,5)@(6,7)", "4@6-7 5@6-7"},
		{"(0,6)", "0@0,6 6@0,6"}, // a group without "@" maps each lcore to the whole group
		{"2@(5-7)", "2@5-7"},
		{"3@1-2", "3@1-2"}, // a plain range is fine as the CPU set
		// The example documented above DPDK's eal_parse_lcores.
		{"1,2@(5-7),(3-5)@(0,2),(0,6),7-8", "0@0,6 1@1 2@5-7 3@0,2 4@0,2 5@0,2 6@0,6 7@7 8@8"},
		{"5-3", "3@3 4@4 5@5"},             // DPDK's eal_parse_set swaps reversed bounds
		{"(5-3)@0", "3@0 4@0 5@0"},         // also inside groups
		{" ( 1 , 2 ) @ ( 3 ) ", "1@3 2@3"}, // blanks around every token
		{"0@1,1@0", "0@1 1@0"},
		{"1023@0", "1023@0"},
	}
	for _, tt := range tests {
		got, err := ParseLcores(tt.in)
		if err != nil {
			t.Errorf("ParseLcores(%q): %v", tt.in, err)
			continue
		}
		if s := lcoreMap(got); s != tt.want {
			t.Errorf("ParseLcores(%q) = %s, want %s", tt.in, s, tt.want)
		}
	}
}

func TestParseLcoresErrors(t *testing.T) {
	tests := []struct {
		in      string
		mention string
	}{
		{"", "empty"},
		{"0-3@1", `"(0-3)@1"`}, // DPDK refuses it too; suggest the group form
		{"1,1@2", "lcore 1 is assigned more than once"},
		{"(0-2),1", "lcore 1 is assigned more than once"},
		{"(1,2", `missing ")"`},
		{"()", "expected a number"},
		{"(1,)", "expected a number"},
		{"(1-2-3)@0", "more than one"},
		{"1@", "missing number"},
		{"@1", "expected a number"},
		{"1@2@3", `unexpected '@'`},
		{"1,", "trailing comma"},
		{",1", "expected a number"},
		{"-1", "expected a number"},
		{"x", `'x'`},
		{"1@x", `'x'`},
		{"1024", "out of range"},
		{"1@1024", "out of range"},
		{"(1)x", `unexpected 'x'`},
		{"1;2", `unexpected ';'`},
	}
	for _, tt := range tests {
		got, err := ParseLcores(tt.in)
		checkParseError(t, fmt.Sprintf("ParseLcores(%q) = %s", tt.in, lcoreMap(got)), err, tt.mention)
	}
}

func FuzzParseLcores(f *testing.F) {
	for _, seed := range []string{"1,2@(5-7),(3-5)@(0,2),(0,6),7-8", "(0-3)@1", "1@2", "(4,5)@(6,7)", "0-3@1", "(1,2", "5-3"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseLcores(s)
		if !parsed(t, err) {
			return
		}
		lcores := make([]int, len(m))
		for i, lc := range m {
			lcores[i] = lc.Lcore
			checkIDs(t, fmt.Sprintf("ParseLcores(%q) CPUs of lcore %d", s, lc.Lcore), lc.CPUs)
		}
		checkIDs(t, fmt.Sprintf("ParseLcores(%q) lcores", s), lcores)
	})
}

// parsed reports whether a parse succeeded, failing the test if its error
// does not wrap ErrInvalidCoreList.
func parsed(t *testing.T, err error) bool {
	t.Helper()
	if err != nil && !errors.Is(err, ErrInvalidCoreList) {
		t.Fatalf("error %v does not wrap ErrInvalidCoreList", err)
	}
	return err == nil
}

// checkIDs fails unless ids is non-empty, ascending, unique and within
// [0, MaxCPUs).
func checkIDs(t *testing.T, what string, ids []int) {
	t.Helper()
	if len(ids) == 0 {
		t.Fatalf("%s: succeeded with no ids", what)
	}
	for i, id := range ids {
		if id < 0 || id >= MaxCPUs || (i > 0 && id <= ids[i-1]) {
			t.Fatalf("%s = %v: not ascending, unique and within [0, %d)", what, ids, MaxCPUs)
		}
	}
}
