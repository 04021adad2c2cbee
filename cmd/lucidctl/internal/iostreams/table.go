package iostreams

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/charmbracelet/lipgloss"
)

// Table writes rows as columns, the first row (the header) in bold and
// every other cell in the style style gives it (nil: plain). Cells are
// padded before they are colored, so escape codes do not upset the
// columns.
func (st *Styles) Table(w io.Writer, rows [][]string, style func(col int, cell string) lipgloss.Style) {
	if len(rows) == 0 {
		return
	}
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for ri, r := range rows {
		var line strings.Builder
		for i, c := range r {
			cell := c
			if i < len(r)-1 {
				cell = fmt.Sprintf("%-*s", widths[i]+2, c)
			}
			switch {
			case ri == 0:
				cell = st.Bold.Render(cell)
			case style != nil:
				cell = style(i, c).Render(cell)
			}
			line.WriteString(cell)
		}
		fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
	}
}

// Bytes is n bytes for people: "512 B", "1.4 MiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
