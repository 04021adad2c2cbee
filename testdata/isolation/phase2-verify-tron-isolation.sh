#!/bin/bash
# scripts/verification/verify-tron-isolation.sh
# Verify TRON isolation in blockchain core

set -e

echo "Running TRON isolation security scan..."

# Scan blockchain/ for TRON references
echo "Scanning blockchain/ for TRON references..."
TRON_REFERENCES=$(grep -r "tron" blockchain/ --exclude-dir=node_modules --exclude="*.log" | grep -v "TRON_ISOLATION_VERIFIED" || true)

if [ -n "$TRON_REFERENCES" ]; then
    echo "ERROR: TRON references found in blockchain core:"
    echo "$TRON_REFERENCES"
    exit 1
fi

# Scan for TronWeb references
echo "Scanning for TronWeb references..."
TRONWEB_REFERENCES=$(grep -r "TronWeb" blockchain/ --exclude-dir=node_modules --exclude="*.log" | grep -v "TRON_ISOLATION_VERIFIED" || true)

if [ -n "$TRONWEB_REFERENCES" ]; then
    echo "ERROR: TronWeb references found in blockchain core:"
    echo "$TRONWEB_REFERENCES"
    exit 1
fi

# Scan for payment logic in blockchain core
echo "Scanning for payment logic in blockchain core..."
PAYMENT_REFERENCES=$(grep -r "payment" blockchain/core/ --exclude-dir=node_modules --exclude="*.log" | grep -v "TRON_ISOLATION_VERIFIED" || true)

if [ -n "$PAYMENT_REFERENCES" ]; then
    echo "ERROR: Payment references found in blockchain core:"
    echo "$PAYMENT_REFERENCES"
    exit 1
fi

# Scan for USDT references
echo "Scanning for USDT references..."
USDT_REFERENCES=$(grep -r "USDT" blockchain/ --exclude-dir=node_modules --exclude="*.log" | grep -v "TRON_ISOLATION_VERIFIED" || true)

if [ -n "$USDT_REFERENCES" ]; then
    echo "ERROR: USDT references found in blockchain core:"
    echo "$USDT_REFERENCES"
    exit 1
fi

# Scan for TRX references
echo "Scanning for TRX references..."
TRX_REFERENCES=$(grep -r "TRX" blockchain/ --exclude-dir=node_modules --exclude="*.log" | grep -v "TRON_ISOLATION_VERIFIED" || true)

if [ -n "$TRX_REFERENCES" ]; then
    echo "ERROR: TRX references found in blockchain core:"
    echo "$TRX_REFERENCES"
    exit 1
fi

# Verify payment-systems/tron/ exists and is isolated
echo "Verifying TRON payment systems isolation..."
if [ ! -d "payment-systems/tron/" ]; then
    echo "ERROR: TRON payment systems directory not found"
    exit 1
fi

# Verify no blockchain references in payment systems
echo "Verifying no blockchain references in payment systems..."
BLOCKCHAIN_REFERENCES=$(grep -r "blockchain" payment-systems/tron/ --exclude-dir=node_modules --exclude="*.log" || true)

if [ -n "$BLOCKCHAIN_REFERENCES" ]; then
    echo "WARNING: Blockchain references found in payment systems:"
    echo "$BLOCKCHAIN_REFERENCES"
fi

echo "TRON isolation security scan completed successfully"
echo "Zero TRON references found in blockchain core"
echo "TRON payment systems properly isolated"
