// Command pairs is the benchmark's ceiling for Kubernetes mode: with client-go, it creates copies of one
// NetworkPolicy + Pod pair (the JSON of the pair the dispatcher created, renamed pairs-<i>-<n>) at a given
// concurrency, policy first as the dispatcher does, and prints the pair rate as one JSON line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	namespace := flag.String("namespace", "", "namespace to create the pairs in")
	podFile := flag.String("pod", "", "JSON of the Pod to copy")
	policyFile := flag.String("policy", "", "JSON of the NetworkPolicy to copy")
	n := flag.Int("n", 200, "pairs to create")
	concurrency := flag.Int("concurrency", 16, "pairs created at once")
	prefix := flag.String("prefix", "pairs", "name prefix of the copies")
	flag.Parse()
	if err := run(*kubeconfig, *namespace, *podFile, *policyFile, *prefix, *n, *concurrency); err != nil {
		fmt.Fprintln(os.Stderr, "pairs:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, namespace, podFile, policyFile, prefix string, n, concurrency int) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	// As the dispatcher: no client-side rate limit, the server's flow control is the limit.
	config.QPS = -1
	config.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	var pod corev1.Pod
	var policy networkingv1.NetworkPolicy
	if err := readJSON(podFile, &pod); err != nil {
		return err
	}
	if err := readJSON(policyFile, &policy); err != nil {
		return err
	}
	ctx := context.Background()
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				name := fmt.Sprintf("%s-%d", prefix, i)
				if err := createPair(ctx, client, namespace, name, &pod, &policy); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if e := firstErr.Load(); e != nil {
		return fmt.Errorf("%d of %d pairs failed, the first with: %v", failed.Load(), n, e)
	}
	out, err := json.Marshal(map[string]any{"pairs": n, "seconds": secs, "per_second": float64(n) / secs})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func createPair(ctx context.Context, client *kubernetes.Clientset, ns, name string, pod *corev1.Pod, policy *networkingv1.NetworkPolicy) error {
	np := policy.DeepCopy()
	np.ObjectMeta = fresh(np.ObjectMeta, ns, name)
	if _, err := client.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		return err
	}
	p := pod.DeepCopy()
	p.ObjectMeta = fresh(p.ObjectMeta, ns, name)
	p.Status = corev1.PodStatus{}
	p.Spec.NodeName = ""
	_, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	return err
}

// fresh keeps the labels and annotations of a copied object and drops what the server set.
func fresh(m metav1.ObjectMeta, ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: m.Labels, Annotations: m.Annotations}
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
