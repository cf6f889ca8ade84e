package main

import (
	"time"
)

// podPolicyRefresh is how often the node's pods' compute policy
// annotations are read.
const podPolicyRefresh = 30 * time.Second
