package jobs

import (
	"fmt"
	"math/big"
	"regexp"
)

var quantityRE = regexp.MustCompile(`^([0-9]{1,24}(?:\.[0-9]{1,24})?|\.[0-9]{1,24})([A-Za-z]*)$`)

// ParseCPU reads cores ("2", "0.5") or millicores ("500m") as millicores.
// Decimals are exact (no float rounding); finer than 1m is an error.
func ParseCPU(s string) (int64, error) {
	m := quantityRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a CPU amount; expected cores like 0.5 or 2, or millicores like 500m", clip(s))
	}
	scale := int64(1000)
	switch m[2] {
	case "":
	case "m":
		scale = 1
	default:
		return 0, fmt.Errorf("%q has unit %q; expected no unit (cores) or m (millicores)", clip(s), clip(m[2]))
	}
	v, err := scaled(m[1], scale, MaxCPUMillis)
	if err != nil {
		return 0, fmt.Errorf("%q: %w; expected whole millicores up to %d cores", s, err, MaxCPUMillis/1000)
	}
	return v, nil
}

var memoryUnits = map[string]int64{
	"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
}

// ParseMemory reads bytes ("1048576") or a size with a unit: Ki Mi Gi Ti Pi
// (powers of 1024) or K M G T P (powers of 1000).
func ParseMemory(s string) (int64, error) {
	m := quantityRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size; expected bytes or a number with a unit like 256Mi, 1Gi, 512M", clip(s))
	}
	unit, ok := memoryUnits[m[2]]
	if !ok {
		return 0, fmt.Errorf("%q has unknown unit %q; expected Ki Mi Gi Ti Pi (1024) or K M G T P (1000)", clip(s), clip(m[2]))
	}
	v, err := scaled(m[1], unit, MaxMemoryBytes)
	if err != nil {
		return 0, fmt.Errorf("%q: %w; expected whole bytes up to 1Pi", s, err)
	}
	return v, nil
}

// scaled returns decimal*scale, which must be a whole number <= max.
func scaled(decimal string, scale, max int64) (int64, error) {
	r, ok := new(big.Rat).SetString(decimal)
	if !ok {
		return 0, fmt.Errorf("not a number")
	}
	r.Mul(r, new(big.Rat).SetInt64(scale))
	if !r.IsInt() {
		return 0, fmt.Errorf("not a whole number of units")
	}
	if r.Num().Cmp(big.NewInt(max)) > 0 {
		return 0, fmt.Errorf("too large")
	}
	return r.Num().Int64(), nil
}

// FormatCPU writes millicores the way ParseCPU reads them.
func FormatCPU(millis int64) string {
	if millis%1000 == 0 {
		return fmt.Sprintf("%d", millis/1000)
	}
	return fmt.Sprintf("%dm", millis)
}

// FormatMemory writes bytes in the largest binary unit that keeps one
// decimal, for messages ("2.1Gi").
func FormatMemory(b int64) string {
	units := []string{"Pi", "Ti", "Gi", "Mi", "Ki"}
	for i, u := range units {
		size := int64(1) << (10 * (len(units) - i))
		if b >= size {
			if b%size == 0 {
				return fmt.Sprintf("%d%s", b/size, u)
			}
			return fmt.Sprintf("%.1f%s", float64(b)/float64(size), u)
		}
	}
	return fmt.Sprintf("%d", b)
}
