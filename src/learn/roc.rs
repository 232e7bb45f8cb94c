//! Scores that separate two kinds of items (same-person pairs from others, cloaked pictures
//! from clean ones): the area under the ROC curve, the equal error rate, and precision and
//! recall at a threshold.

/// P(a same pair scores above a different pair), ties counting half (Mann-Whitney U / n m).
pub fn auc(same: &[f64], different: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = same.iter().map(|&s| (s, true)).chain(different.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the ranks of the same pairs, with tied scores sharing their mean rank.
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (n, m) = (same.len() as f64, different.len() as f64);
    (rank_sum - n * (n + 1.0) / 2.0) / (n * m)
}

/// The ROC curve of `positive` against `negative` scores, as (false positive rate, true
/// positive rate) points from (0, 0) to (1, 1); tied scores move together (one diagonal
/// step); about `max_points` points at most, for plotting.
pub fn curve(positive: &[f64], negative: &[f64], max_points: usize) -> Vec<(f64, f64)> {
    let mut scores: Vec<(f64, bool)> = positive.iter().map(|&s| (s, true)).chain(negative.iter().map(|&s| (s, false))).collect();
    scores.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (p, n) = (positive.len().max(1) as f64, negative.len().max(1) as f64);
    let step = (scores.len() / max_points.max(1)).max(1);
    let (mut tp, mut fp, mut i) = (0.0, 0.0, 0);
    let mut points = vec![(0.0, 0.0)];
    while i < scores.len() {
        let mut j = i;
        while j < scores.len() && scores[j].0 == scores[i].0 {
            if scores[j].1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            j += 1;
        }
        if j / step != i / step || j == scores.len() {
            points.push((fp / n, tp / p));
        }
        i = j;
    }
    points
}

/// The error rate at the threshold where false accepts and false rejects are closest.
pub fn eer(same: &[f64], different: &[f64]) -> f64 {
    let mut thresholds: Vec<f64> = same.iter().chain(different).copied().collect();
    thresholds.sort_by(f64::total_cmp);
    let (mut s, mut d) = (same.to_vec(), different.to_vec());
    s.sort_by(f64::total_cmp);
    d.sort_by(f64::total_cmp);
    let mut best = (f64::INFINITY, 1.0);
    for t in thresholds {
        let false_reject = s.partition_point(|&x| x < t) as f64 / s.len() as f64;
        let false_accept = (d.len() - d.partition_point(|&x| x < t)) as f64 / d.len() as f64;
        let gap = (false_reject - false_accept).abs();
        if gap < best.0 {
            best = (gap, (false_reject + false_accept) / 2.0);
        }
    }
    best.1
}

/// Precision and recall of calling `positive` scores >= `threshold` positive (NaN precision
/// when nothing is called positive).
pub fn precision_recall(positive: &[f64], negative: &[f64], threshold: f64) -> (f64, f64) {
    let tp = positive.iter().filter(|&&s| s >= threshold).count() as f64;
    let fp = negative.iter().filter(|&&s| s >= threshold).count() as f64;
    (tp / (tp + fp), tp / positive.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_runs_corner_to_corner_and_its_auc_agrees() {
        let (pos, neg) = ([0.9, 0.8], [0.2, 0.1]);
        let points = curve(&pos, &neg, 200);
        assert_eq!(points, vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]);
        assert_eq!(auc(&pos, &neg), 1.0);
        assert_eq!(curve(&[0.5, 0.5], &[0.5, 0.5], 200), vec![(0.0, 0.0), (1.0, 1.0)], "ties: one diagonal step");
        assert_eq!(auc(&[0.5, 0.5], &[0.5, 0.5]), 0.5);
        assert_eq!(auc(&[0.1], &[0.9]), 0.0);
        assert_eq!(curve(&[0.1], &[0.9], 200).last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn auc_and_eer_of_known_score_sets() {
        assert_eq!(auc(&[0.9, 0.8], &[0.1, 0.2]), 1.0);
        assert_eq!(auc(&[0.1], &[0.9]), 0.0);
        assert_eq!(auc(&[0.5], &[0.5]), 0.5);
        assert!((auc(&[0.9, 0.3], &[0.5, 0.1]) - 0.75).abs() < 1e-12);
        assert_eq!(eer(&[0.9, 0.8], &[0.1, 0.2]), 0.0);
        assert!((eer(&[0.9, 0.3], &[0.5, 0.1]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn precision_and_recall_at_a_threshold() {
        assert_eq!(precision_recall(&[0.9, 0.6, 0.2], &[0.7, 0.1], 0.5), (2.0 / 3.0, 2.0 / 3.0));
    }
}
