package isolation

import "strings"

// tokenMatch is a term found in a line.
type tokenMatch struct {
	col  int // 0-based byte offset
	text string
	term string
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool { return isLower(c) || isUpper(c) || isDigit(c) }

// findTerms returns the terms (lower-case keys of terms) that occur in line
// as tokens: runs of letters and digits, and the camelCase parts of each
// run. Underscores, dots, quotes and spaces separate; so does a change from
// lower to upper case ("isTron"), and the end of an upper-case run before a
// capitalised word ("TRXAmount"). Digits stay with the letters before them
// ("trc20").
func findTerms(line string, terms map[string]bool) []tokenMatch {
	var out []tokenMatch
	for i := 0; i < len(line); {
		if !isAlnum(line[i]) {
			i++
			continue
		}
		j := i
		for j < len(line) && isAlnum(line[j]) {
			j++
		}
		word := line[i:j]
		if t := strings.ToLower(word); terms[t] {
			out = append(out, tokenMatch{col: i, text: word, term: t})
		} else {
			for _, p := range camelParts(word) {
				part := word[p[0]:p[1]]
				t := strings.ToLower(part)
				// A plural of an acronym (TRXs, USDTs) names the same thing.
				if !terms[t] && len(part) > 2 && part[len(part)-1] == 's' && isUpper(part[len(part)-2]) {
					t = t[:len(t)-1]
				}
				if terms[t] {
					out = append(out, tokenMatch{col: i + p[0], text: part, term: t})
				}
			}
		}
		i = j
	}
	return out
}

// camelParts splits an alphanumeric word into its camelCase parts, as
// [start, end) offsets.
func camelParts(w string) [][2]int {
	var parts [][2]int
	start := 0
	for k := 1; k < len(w); k++ {
		prev, cur := w[k-1], w[k]
		split := false
		switch {
		case (isLower(prev) || isDigit(prev)) && isUpper(cur):
			split = true // isTron, trc20Token
		case isUpper(prev) && isUpper(cur) && k+1 < len(w) && isLower(w[k+1]) && w[k+1:] != "s":
			split = true // TRXAmount: TRX | Amount; but TRXs is a plural
		}
		if split {
			parts = append(parts, [2]int{start, k})
			start = k
		}
	}
	return append(parts, [2]int{start, len(w)})
}
